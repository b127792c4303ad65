"""ImageReward without torchvision/timm/openai-clip: against THUDM/ImageReward's own ImageReward.score() and
inference_rank() where its code can run (tests/imagereward_reference.py), against a functional transcription of
vit.py/med.py everywhere, plus preprocessing, the strict key check, full-size names and shapes, and a scored run.

Tolerances (stated where asserted): rewards within 1e-4 of the reference (measured ~7e-7), 1e-4 of the
transcription; preprocessing bit-exact."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from imagereward_reference import make_tiny_vocab, reference_available, reference_modules
from evalkit.errors import EvalkitError
from evalkit.metrics import imagereward as ir

TINY_VIT = {"width": 64, "depth": 2, "heads": 4, "patch": 16, "image_size": 224}
TINY_MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 256,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
            "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524,
            "encoder_width": 1024, "add_cross_attention": True}
# BLIP's standard med_config.json (THUDM/ImageReward's): BERT-base with cross-attention
BLIP_MED = {**TINY_MED, "intermediate_size": 3072, "max_position_embeddings": 512, "num_attention_heads": 12,
            "num_hidden_layers": 12, "encoder_width": 768}
PROMPTS = ["a photo of an astronaut", "a cat lying on a rug", "a cup of coffee, high quality 4k",
           "a rocket on a launch pad at dusk",
           "baroque style, a lavish oil painting of " + ", ".join(f"ornate gilded detail number {i}" for i in range(12))]


def photos() -> list[np.ndarray]:
    import skimage.data as d

    a = d.astronaut()
    # resized to 303x224: the centre-crop offset (303-224)/2 = 39.5 rounds to 40 (torchvision), not 39 (//)
    odd = np.ascontiguousarray(a[:300, :407])
    return [a, d.chelsea(), d.coffee(), np.ascontiguousarray(d.rocket()[:, :300]), odd]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter off its init (zeros, ones), and a unit-gain head so the rewards spread."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.02 if p.ndim > 1 else 0.05))
        for lin in model.mlp.layers:
            if isinstance(lin, torch.nn.Linear):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.in_features))
        model.mlp.layers[-1].bias.add_(0.3)
    return model


def _folder(tmp_path, state_dict) -> "Path":  # noqa: F821
    d = tmp_path / "ImageReward"
    make_tiny_vocab(d)
    (d / "med_config.json").write_text(json.dumps(TINY_MED))
    torch.save(state_dict, str(d / "ImageReward.pt"))
    return d


@pytest.mark.skipif(reference_available() is not None, reason=str(reference_available()))
def test_matches_imagereward_score_and_inference_rank(tmp_path):
    from PIL import Image

    bert = make_tiny_vocab(tmp_path / "bert-base-uncased")
    (tmp_path / "med_config.json").write_text(json.dumps(TINY_MED))
    imgs = photos()
    with reference_modules(bert) as R:
        def tiny_create_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
            assert vit == "large"  # ImageReward.py L76 asks for BLIP's ViT-L; the same class, tiny
            return R["vit"].VisionTransformer(img_size=image_size, patch_size=TINY_VIT["patch"],
                                              embed_dim=TINY_VIT["width"], depth=TINY_VIT["depth"],
                                              num_heads=TINY_VIT["heads"], drop_path_rate=0.1), TINY_VIT["width"]

        R["blip_pretrain"].create_vit = tiny_create_vit
        torch.manual_seed(0)
        ref = _perturbed(R["ImageReward"].ImageReward(med_config=str(tmp_path / "med_config.json"), device="cpu"))
        torch.save(ref.state_dict(), str(tmp_path / "ImageReward.pt"))  # what utils.py L72 loads
        ref = R["ImageReward"].ImageReward(med_config=str(tmp_path / "med_config.json"), device="cpu")
        ref.load_state_dict(torch.load(str(tmp_path / "ImageReward.pt"), map_location="cpu"), strict=False)
        ref.eval()
        with torch.no_grad():
            want = np.array([ref.score(p, Image.fromarray(i)) for i, p in zip(imgs, PROMPTS)])
            _, want_rank = ref.inference_rank(PROMPTS[0], [Image.fromarray(i) for i in imgs])
        want_px = [ref.preprocess(Image.fromarray(i)) for i in imgs]
        want_tok = ref.blip.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert "torchvision" not in __import__("sys").modules and "timm" not in __import__("sys").modules
    model = ir.load_imagereward(tmp_path / "ImageReward.pt", tmp_path / "med_config.json", vit=TINY_VIT)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) <= set(ref_shapes) and all(ref_shapes[k] == s for k, s in ours.items())  # the checkpoint's names
    tok = ir.blip_tokenizer(bert)
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert torch.equal(enc.input_ids, want_tok.input_ids) and torch.equal(enc.attention_mask, want_tok.attention_mask)
    for i, px in zip(imgs, want_px):
        assert torch.equal(ir.imagereward_preprocess(i), px)  # bit-exact, the odd crop offset included
    with torch.no_grad():
        px = torch.stack([ir.imagereward_preprocess(i) for i in imgs])
        got = model(px, enc.input_ids, enc.attention_mask).double().numpy()
        got_rank = model(px, enc.input_ids[:1].expand(len(imgs), -1), enc.attention_mask[:1].expand(len(imgs), -1))
    assert np.ptp(want) > 0.1  # the rewards spread: not a comparison of constants
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # tolerance 1e-4
    np.testing.assert_allclose(got_rank.double().numpy(), np.asarray(want_rank), rtol=0, atol=1e-4)


def transcribed_forward(sd: dict, med: dict, vit: dict, px: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """vit.py VisionTransformer.forward (L165-190: patch_embed, cls token, pos_embed, Blocks of L85-106 with the
    Attention of L40-82: qkv, (q @ k^T) * head_dim^-0.5, softmax, @ v, proj; final norm, eps 1e-6) and med.py's
    BertModel in 'multimodal' mode (BertEmbeddings L44-87 without token types; BertSelfAttention L96-186 with the
    (1 - mask) * -10000 extended mask of L659; cross-attention to every image token; BertIntermediate/Output with
    gelu), [CLS], ImageReward.py's MLP (L40-68) and (r - mean) / std (L80-81, L134), written from the state dict."""
    F = torch.nn.functional

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def ln(x, p, eps):
        return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)

    def attention(q, k, v, heads, add_mask=None):
        B, L, C = q.shape
        split = lambda t: t.reshape(B, t.shape[1], heads, C // heads).permute(0, 2, 1, 3)  # noqa: E731
        s = split(q) @ split(k).transpose(-1, -2) / math.sqrt(C // heads)
        if add_mask is not None:
            s = s + add_mask
        return (s.softmax(-1) @ split(v)).permute(0, 2, 1, 3).reshape(B, L, C)

    v = "blip.visual_encoder."
    x = F.conv2d(px, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=vit["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[v + "pos_embed"]
    for i in range(vit["depth"]):
        b = f"{v}blocks.{i}."
        q, k, vv = lin(ln(x, b + "norm1", 1e-6), b + "attn.qkv").chunk(3, dim=-1)
        x = x + lin(attention(q, k, vv, vit["heads"]), b + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    img = ln(x, v + "norm", 1e-6)
    t = "blip.text_encoder."
    eps = med["layer_norm_eps"]
    h = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    h = ln(h, t + "embeddings.LayerNorm", eps)
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(med["num_hidden_layers"]):
        L = f"{t}encoder.layer.{i}."
        for part, m in (("attention", ext), ("crossattention", None)):
            kv = h if part == "attention" else img
            a = attention(lin(h, L + part + ".self.query"), lin(kv, L + part + ".self.key"),
                          lin(kv, L + part + ".self.value"), med["num_attention_heads"], m)
            h = ln(lin(a, L + part + ".output.dense") + h, L + part + ".output.LayerNorm", eps)
        h = ln(lin(F.gelu(lin(h, L + "intermediate.dense")), L + "output.dense") + h, L + "output.LayerNorm", eps)
    r = h[:, 0]
    for j in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{j}")
    return (r[:, 0] - 0.16717362830052426) / 1.0333394966054072


def test_forward_matches_a_transcription_of_vit_and_med(tmp_path):
    torch.manual_seed(1)
    sd = _perturbed(ir.build_model(TINY_MED, TINY_VIT)).state_dict()
    d = _folder(tmp_path, {**sd, "blip.vision_proj.weight": torch.zeros(256, 64)})  # unused keys are ignored
    model = ir.load_imagereward(d / "ImageReward.pt", d / "med_config.json", vit=TINY_VIT)
    tok = ir.blip_tokenizer(d)
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    px = torch.stack([ir.imagereward_preprocess(i) for i in photos()])
    with torch.no_grad():
        got = model(px, enc.input_ids, enc.attention_mask)
        want = transcribed_forward(sd, TINY_MED, TINY_VIT, px, enc.input_ids, enc.attention_mask)
    assert float(want.std()) > 0.05
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-4)  # tolerance 1e-4
    assert int(enc.attention_mask[-1].sum()) == 35 and int(enc.attention_mask[0].sum()) < 35  # padding is masked


def test_preprocess_crops_as_torchvision_does():
    """Resize(224, BICUBIC) then CenterCrop(224): the crop offset is round((303 - 224) / 2) = 40 for the odd image
    (torchvision functional.center_crop),
    where transformers' CLIP processor (and evalkit's clip_preprocess) take 39."""
    from PIL import Image

    from evalkit.metrics.clip_score import clip_preprocess

    odd = photos()[-1]
    assert odd.shape[:2] == (300, 407)
    pil = Image.fromarray(odd).resize((303, 224), Image.BICUBIC)  # short side 224, long int(224 * 407 / 300)
    want = np.asarray(pil.crop((40, 0, 264, 224))).astype(np.float32) / 255
    want = (want - np.array([0.48145466, 0.4578275, 0.40821073], np.float32)) / np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    np.testing.assert_array_equal(ir.imagereward_preprocess(odd).numpy(), want.transpose(2, 0, 1))
    assert not np.array_equal(clip_preprocess(odd), want.transpose(2, 0, 1))


def test_strict_key_check_names_the_file(tmp_path):
    sd = ir.build_model(TINY_MED, TINY_VIT).state_dict()
    d = _folder(tmp_path, {k: v for k, v in sd.items() if "crossattention.self.key" not in k})
    with pytest.raises(EvalkitError, match=r"ImageReward.pt does not match ImageReward.*4 missing key") as e:
        ir.load_imagereward(d / "ImageReward.pt", d / "med_config.json", vit=TINY_VIT)
    assert "\n" not in str(e.value)
    torch.save({**sd, "mlp.layers.0.weight": torch.zeros(1024, 512)}, str(d / "ImageReward.pt"))
    with pytest.raises(EvalkitError, match=r"1 wrong shape"):
        ir.load_imagereward(d / "ImageReward.pt", d / "med_config.json", vit=TINY_VIT)


def test_full_size_names_and_shapes_are_the_checkpoints():
    """BLIP ViT-L/16 + BERT-base (BLIP's med_config.json) on the meta device: the shapes ImageReward.pt holds
    (blip.py create_vit('large'), blip_pretrain.py L32-37 encoder_width = 1024, ImageReward.py MLP(768))."""
    with torch.device("meta"):
        sd = ir.build_model(BLIP_MED).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert len(shapes) == 620  # the reference's 625 keys less position_ids and the unused ITC projections
    assert shapes["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert shapes["blip.visual_encoder.patch_embed.proj.weight"] == (1024, 3, 16, 16)
    assert shapes["blip.visual_encoder.blocks.23.attn.qkv.weight"] == (3072, 1024)
    assert shapes["blip.text_encoder.embeddings.word_embeddings.weight"] == (30524, 768)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (768, 1024)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.query.weight"] == (768, 768)
    assert shapes["mlp.layers.7.weight"] == (1, 16) and "mlp.layers.1.weight" not in shapes


def test_imagereward_and_its_drop_in_a_scored_run(tmp_path, monkeypatch):
    from metrics_fixtures import make_run, noise

    from evalkit.score.stage import score_run

    monkeypatch.setattr(ir, "VIT_LARGE", TINY_VIT)  # the tiny ViT in place of BLIP's ViT-L
    torch.manual_seed(2)
    d = _folder(tmp_path, _perturbed(ir.build_model(TINY_MED, TINY_VIT)).state_dict())
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 30, seed=i)}, n_prompts=3, size=64)
    res = score_run(run, "imagereward,imagereward_drop", workers=1, progress=False, device="cpu",
                    metric_weights={"imagereward": str(d / "ImageReward.pt")})
    ref, q, drop = res["bf16"]["imagereward"], res["q"]["imagereward"], res["q"]["imagereward_drop"]
    assert ref["status"] == q["status"] == drop["status"] == "ok"
    assert drop["mean"] == pytest.approx(ref["mean"] - q["mean"], abs=1e-9)
    files = ("ImageReward.pt", "med_config.json", "vocab.txt", "tokenizer_config.json")
    want = {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in files}
    assert q["weights_sha256"] == want == drop["weights_sha256"]
    assert q["n_truncated_prompts"] == 0 and "35" in q["truncation"]
