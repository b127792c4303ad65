"""HPSv2.1 without open_clip or torchvision at run time, against open_clip's own CLIP model and tokenizer (the
architecture HPSv2 bundles: hpsv2/src/open_clip is open_clip 2.x; NOTES.md measured both within 1.1e-7) on a tiny
random open_clip ViT saved as HPS_v2.1_compressed.pt is, plus the full-size ViT-H-14 conversion.

Tolerance (stated where asserted): 1e-5 in cosine (measured ~1e-7); token ids identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from preference_fixtures import TINY_OPEN_CLIP, build_tiny_hps, open_clip_modules, photos, tiny_open_clip
from evalkit.errors import EvalkitError
from evalkit.metrics.hps import VIT_H_14, HPSv21Metric, hf_clip_config, hps_preprocess, open_clip_to_hf

PROMPTS = ["a photo of an astronaut", "A Cat lying on a rug, 4k, trending on artstation", "a cup of coffee",
           "a rocket on a launch pad at dusk", "Tom &amp; Jerry, “curly quotes”", "schÃ¶n   mojibake",
           "baroque style, a lavish oil painting of " + ", ".join(f"ornate gilded detail number {i}" for i in range(40))]


def reference_preprocess(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """hpsv2/src/open_clip/transform.py L141-157 (eval, resize_longest_max=True) with ResizeMaxSize L26-49, torchvision
    spelled out: ToTensor; scale = size / max(h, w); if scale != 1: F.resize(img, (round(h·s), round(w·s)),
    bicubic) on the float tensor (torchvision >= 0.17 antialiases tensors) and F.pad(img, [pw//2, ph//2, pw - pw//2,
    ph - ph//2], fill=0); Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)."""
    img = torch.from_numpy(image.copy()).permute(2, 0, 1).to(torch.float32).div(255)
    h, w = img.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_size = tuple(round(d * scale) for d in (h, w))
        img = torch.nn.functional.interpolate(img[None], size=new_size, mode="bicubic", align_corners=False,
                                              antialias=True)[0]
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        img = torch.nn.functional.pad(img, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(-1, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(-1, 1, 1)
    return (img - mean) / std


def reference_hps(ckpt, images, prompts) -> tuple[np.ndarray, torch.Tensor]:
    """hpsv2/img_score.py L54-56 + L88-97 on open_clip's CLIP class: strict load_state_dict(checkpoint
    ['state_dict']), tokenizer = open_clip tokenize, features L2-normalised (model.py forward), score =
    diagonal(image_features @ text_features.T)."""
    oc = open_clip_modules()
    m = oc["model"]
    model = m.CLIP(TINY_OPEN_CLIP["embed_dim"], m.CLIPVisionCfg(**TINY_OPEN_CLIP["vision_cfg"]),
                   m.CLIPTextCfg(**TINY_OPEN_CLIP["text_cfg"]), quick_gelu=False).eval()
    model.load_state_dict(torch.load(str(ckpt), map_location="cpu")["state_dict"])
    scores, ids = [], []
    with torch.no_grad():
        for img, prompt in zip(images, prompts):
            text = oc["tokenizer"].tokenize([prompt])
            fi = torch.nn.functional.normalize(model.encode_image(reference_preprocess(img)[None]), dim=-1)
            ft = torch.nn.functional.normalize(model.encode_text(text), dim=-1)
            scores.append(float(torch.diagonal(fi @ ft.T)[0]))
            ids.append(text[0])
    return np.asarray(scores), torch.stack(ids)


@pytest.mark.parametrize("half", [False, True], ids=["fp32-checkpoint", "fp16-checkpoint"])
def test_matches_open_clip_scoring_the_same_checkpoint(tmp_path, half):
    folder = build_tiny_hps(tmp_path / "hps", half=half)
    imgs = photos()
    imgs = imgs + imgs[:2]
    metric = HPSv21Metric(metric_weights={"hps_v21": str(folder)})
    ours, flags = metric.score(imgs, PROMPTS)
    ref, ref_ids = reference_hps(folder / "HPS_v2.1_compressed.pt", imgs, PROMPTS)
    assert np.ptp(ref) > 0.05  # the tiny model separates the pairs
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)  # tolerance 1e-5 in cosine
    ids, _mask, _cut = metric._tokens(PROMPTS)
    assert torch.equal(ids, ref_ids)  # &amp;, curly quotes, mojibake, a 279-token prompt: the same ids
    assert flags == [False] * 6 + [True]
    assert "torchvision" not in __import__("sys").modules


def test_preprocess_letterboxes_the_longer_side():
    for img in photos():
        np.testing.assert_array_equal(hps_preprocess(img).numpy(), reference_preprocess(img).numpy())
    x = hps_preprocess(photos()[3])  # rocket crop: portrait 427x300 -> 224x157, zero-padded left and right
    pad_value = (0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(x[:, :, 0].mean(dim=1).numpy(), pad_value, atol=1e-6)


def test_vit_h_14_converts_to_a_complete_transformers_clip():
    """Full size, no weights (meta tensors): every open_clip ViT-H-14 key maps to a CLIPModel key of the same shape
    and every CLIPModel parameter is filled, so the real checkpoint loads strictly."""
    from transformers import CLIPModel

    m = open_clip_modules()["model"]
    with torch.device("meta"):
        oc = m.CLIP(VIT_H_14["embed_dim"], m.CLIPVisionCfg(**VIT_H_14["vision_cfg"]),
                    m.CLIPTextCfg(**VIT_H_14["text_cfg"]), quick_gelu=False)
        hf = CLIPModel(hf_clip_config(VIT_H_14))
    conv = open_clip_to_hf(oc.state_dict())
    hsd = hf.state_dict()
    assert {k for k in hsd if not k.endswith("position_ids")} == set(conv)
    assert all(tuple(conv[k].shape) == tuple(hsd[k].shape) for k in conv)
    total = sum(v.numel() for k, v in oc.state_dict().items() if k != "attn_mask")  # a buffer, not a weight
    assert sum(v.numel() for v in conv.values()) == total > 9e8  # nothing dropped (986M values)


def test_a_wrong_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    folder = build_tiny_hps(tmp_path / "hps")
    sd = tiny_open_clip().state_dict()
    sd.pop("ln_final.weight")
    torch.save({"state_dict": sd}, str(folder / "HPS_v2.1_compressed.pt"))
    with pytest.raises(EvalkitError, match=r"HPS_v2.1_compressed.pt is not an open_clip ViT CLIP checkpoint") as e:
        HPSv21Metric(metric_weights={"hps_v21": str(folder)})
    assert "\n" not in str(e.value)
    torch.save({"state_dict": sd, "fn": print}, str(folder / "HPS_v2.1_compressed.pt"))  # pickled code: refused
    with pytest.raises(EvalkitError, match="weights-only"):
        HPSv21Metric(metric_weights={"hps_v21": str(folder / "HPS_v2.1_compressed.pt")})
