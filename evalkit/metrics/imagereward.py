"""ImageReward (Xu et al., NeurIPS 2023; THUDM/ImageReward): a BLIP ViT-L + BERT cross-encoder with a reward head,
trained on human preferences. Prompt metric: per (image, prompt), higher is better; also as ``imagereward_drop``.

Reference scoring code (image-reward 1.5 on PyPI == github THUDM/ImageReward @c1392c6):
  * ImageReward/utils.py L72-81: torch.load(ImageReward.pt); ImageReward(med_config); load_state_dict(strict=False);
  * ImageReward.py L30-37 _transform: Resize(224, BICUBIC), CenterCrop(224), RGB, ToTensor, Normalize(CLIP mean/std);
  * ImageReward.py L40-68 MLP(768): Linear 768→1024→128→64→16→1 with dropouts and NO activations (indices 0,2,4,6,7);
  * ImageReward.py L76-81: BLIP_Pretrain(image_size=224, vit='large', med_config); mean 0.16717362830052426,
    std 1.0333394966054072;
  * ImageReward.py L103-136 score(): BERT tokens (padding='max_length', truncation=True, max_length=35);
    image_embeds = visual_encoder(image); text_encoder(ids, mask, encoder_hidden_states=image_embeds, all-ones
    encoder mask); feature = last_hidden_state[:, 0] ([CLS]); reward = (mlp(feature) - mean) / std;
  * models/BLIP/vit.py (timm-style ViT-L/16: pre-LN blocks, LayerNorm eps 1e-6, all 197 tokens returned) and
    models/BLIP/med.py (BERT without token-type embeddings; self-attention bidirectional with a (1 - mask)·-10000
    additive mask; cross-attention to the image tokens with key/value from encoder_width = 1024 inputs).

Why evalkit owns these ~150 lines of torch instead of importing the package: ImageReward imports torchvision, timm
(which imports torchvision), openai `clip` and diffusers, and med.py imports names transformers 5 removed.
transformers' own BertModel cannot stand in (cross-attention forces causal self-attention, takes hidden_size
key/value inputs and adds token-type embeddings). Parameter names are those of ImageReward.pt, so it loads as is,
and strictly: every key the model needs must be present with its shape (the reference loads with strict=False, so
a wrong file would silently keep random weights); keys it does not use (the BLIP ITC projections) are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.metrics.clip_score import CLIP_MEAN, CLIP_STD
from evalkit.metrics.user_weights import UserWeightsPromptMetric
from evalkit.weights.user import require_file

IR_MEAN, IR_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py L80-81
MAX_TEXT_TOKENS = 35  # ImageReward.py L105: max_length=35
# BLIP create_vit('large') (blip.py L33-38): ViT-L/16 at 224 px. Tests swap in a tiny one of the same structure.
VIT_LARGE: dict[str, int] = {"width": 1024, "depth": 24, "heads": 16, "patch": 16, "image_size": 224}
BERT_DIRS = ("", "bert-base-uncased")  # where vocab.txt may be, relative to the ImageReward folder


def build_model(med_cfg: Mapping[str, Any], vit: Mapping[str, int] | None = None) -> Any:
    """ImageReward's modules under the checkpoint's names: blip.visual_encoder, blip.text_encoder, mlp.layers."""
    from torch import nn

    v = dict(VIT_LARGE if vit is None else vit)
    # The module classes are made when a model is built, not at import: importing this module needs no torch.
    VisionTransformer, TextEncoder = _vision_transformer_class(), _text_encoder_class()

    class ImageReward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blip = nn.Module()
            self.blip.visual_encoder = VisionTransformer(v)
            # blip_pretrain.py L32-37: encoder_width is the ViT's width, whatever med_config.json says.
            self.blip.text_encoder = TextEncoder(med_cfg, encoder_width=v["width"])
            H = int(med_cfg["hidden_size"])
            # MLP(768): Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear; no activations.
            self.mlp = nn.Module()
            self.mlp.layers = nn.Sequential(nn.Linear(H, 1024), nn.Identity(), nn.Linear(1024, 128), nn.Identity(),
                                            nn.Linear(128, 64), nn.Identity(), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, pixel_values: Any, input_ids: Any, attention_mask: Any) -> Any:
            h = self.blip.text_encoder(input_ids, attention_mask, self.blip.visual_encoder(pixel_values))
            return ((self.mlp.layers(h[:, 0, :]) - IR_MEAN) / IR_STD)[:, 0]

    return ImageReward().eval()


def _attention_class() -> type:
    """med.py's BertAttention as a torch module class: self-attention over the text (key/value width = hidden
    size), or cross-attention to the image tokens (key/value width = the ViT's width)."""
    import torch
    from torch import nn

    F = torch.nn.functional

    class Attention(nn.Module):  # med.py BertAttention (self.query/key/value + output.dense/LayerNorm)
        def __init__(self, hidden: int, heads: int, kv_width: int, eps: float) -> None:
            super().__init__()
            self.heads = heads
            self.self = nn.Module()
            self.self.query, self.self.key, self.self.value = (nn.Linear(hidden, hidden), nn.Linear(kv_width, hidden),
                                                               nn.Linear(kv_width, hidden))
            self.output = nn.Module()
            self.output.dense, self.output.LayerNorm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)

        def forward(self, h: Any, kv: Any, mask: Any) -> Any:
            B, L, C = h.shape

            def split(t: Any) -> Any:
                return t.view(B, t.shape[1], self.heads, C // self.heads).transpose(1, 2)

            a = F.scaled_dot_product_attention(split(self.self.query(h)), split(self.self.key(kv)),
                                               split(self.self.value(kv)), attn_mask=mask)
            return self.output.LayerNorm(self.output.dense(a.transpose(1, 2).reshape(B, L, C)) + h)

    return Attention


def _text_encoder_class() -> type:
    """med.py's BertModel in 'multimodal' mode as a torch module class: BERT without token-type embeddings, each
    layer bidirectional self-attention, cross-attention to every image token, then the feed-forward."""
    import torch
    from torch import nn

    F = torch.nn.functional
    Attention = _attention_class()

    class TextEncoder(nn.Module):  # med.py BertModel(add_pooling_layer=False), 'multimodal' mode
        def __init__(self, cfg: Mapping[str, Any], encoder_width: int) -> None:
            super().__init__()
            if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
                raise EvalkitError("imagereward: med_config.json must use hidden_act gelu and absolute positions")
            H, eps = int(cfg["hidden_size"]), float(cfg["layer_norm_eps"])
            self.embeddings = nn.Module()
            self.embeddings.word_embeddings = nn.Embedding(int(cfg["vocab_size"]), H)
            self.embeddings.position_embeddings = nn.Embedding(int(cfg["max_position_embeddings"]), H)
            self.embeddings.LayerNorm = nn.LayerNorm(H, eps=eps)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList()
            for _ in range(int(cfg["num_hidden_layers"])):
                layer = nn.Module()
                layer.attention = Attention(H, int(cfg["num_attention_heads"]), H, eps)
                layer.crossattention = Attention(H, int(cfg["num_attention_heads"]), encoder_width, eps)
                layer.intermediate = nn.Module()
                layer.intermediate.dense = nn.Linear(H, int(cfg["intermediate_size"]))
                layer.output = nn.Module()
                layer.output.dense = nn.Linear(int(cfg["intermediate_size"]), H)
                layer.output.LayerNorm = nn.LayerNorm(H, eps=eps)
                self.encoder.layer.append(layer)

        def forward(self, ids: Any, attention_mask: Any, image_embeds: Any) -> Any:
            pos = torch.arange(ids.shape[1], device=ids.device)[None]
            h = self.embeddings.LayerNorm(self.embeddings.word_embeddings(ids)
                                          + self.embeddings.position_embeddings(pos))
            # med.py get_extended_attention_mask: (1 - mask) * -10000 added to the scores (not causal).
            mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
            for layer in self.encoder.layer:
                h = layer.attention(h, h, mask)
                h = layer.crossattention(h, image_embeds, None)  # every image token is attended (all-ones mask)
                h = layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(h))) + h)
            return h

    return TextEncoder


def _vision_transformer_class() -> type:
    """vit.py's VisionTransformer (timm-style ViT: pre-LN blocks, LayerNorm eps 1e-6, every token returned) as a
    torch module class, inference only; its size (width, depth, heads, patch, image_size) is given to it."""
    import torch
    from torch import nn

    F = torch.nn.functional

    class VisionTransformer(nn.Module):  # vit.py VisionTransformer, inference only
        def __init__(self, v: Mapping[str, int]) -> None:
            super().__init__()
            W, self.heads = v["width"], v["heads"]
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(3, W, v["patch"], v["patch"])
            self.cls_token = nn.Parameter(torch.zeros(1, 1, W))
            self.pos_embed = nn.Parameter(torch.zeros(1, (v["image_size"] // v["patch"]) ** 2 + 1, W))
            self.blocks = nn.ModuleList()
            for _ in range(v["depth"]):
                b = nn.Module()
                b.norm1, b.norm2 = nn.LayerNorm(W, eps=1e-6), nn.LayerNorm(W, eps=1e-6)
                b.attn = nn.Module()
                b.attn.qkv, b.attn.proj = nn.Linear(W, 3 * W), nn.Linear(W, W)
                b.mlp = nn.Module()
                b.mlp.fc1, b.mlp.fc2 = nn.Linear(W, 4 * W), nn.Linear(4 * W, W)
                self.blocks.append(b)
            self.norm = nn.LayerNorm(W, eps=1e-6)

        def forward(self, x: Any) -> Any:
            x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos_embed[:, : x.shape[1]]
            B, N, C = x.shape
            for b in self.blocks:
                qkv = b.attn.qkv(b.norm1(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
                a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale head_dim^-0.5, as vit.py
                x = x + b.attn.proj(a.transpose(1, 2).reshape(B, N, C))
                x = x + b.mlp.fc2(F.gelu(b.mlp.fc1(b.norm2(x))))
            return self.norm(x)

    return VisionTransformer


def load_imagereward(ckpt: Path, med_config: Path, vit: Mapping[str, int] | None = None) -> Any:
    """The reward model from ImageReward.pt + med_config.json, read with torch.load(weights_only=True); every key
    the model needs must be in the file with its shape, else an EvalkitError names the file and the keys."""
    import torch

    try:
        med = json.loads(med_config.read_text())
        model = build_model(med, vit)
    except (ValueError, KeyError, TypeError) as e:
        raise EvalkitError(f"imagereward: {med_config} is not BLIP's med_config.json ({type(e).__name__}: {e})") from None
    try:
        sd = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code objects, a truncated file, not a torch file
        raise EvalkitError(f"imagereward: cannot read {ckpt} as a weights-only torch checkpoint "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else {}
    need = model.state_dict()
    missing = [k for k in need if k not in sd]
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(need[k].shape)}" for k in need
           if k in sd and tuple(sd[k].shape) != tuple(need[k].shape)]
    if missing or bad:
        raise EvalkitError(f"imagereward: {ckpt} does not match ImageReward (BLIP ViT-L + med_config.json): "
                           f"{len(missing)} missing key(s) {missing[:3]}, {len(bad)} wrong shape(s) {bad[:3]}")
    model.load_state_dict({k: sd[k].float() for k in need})
    return model


def imagereward_preprocess(image: Any, n_px: int = 224) -> Any:
    """torchvision's PIL path of Resize(n_px, BICUBIC) + CenterCrop(n_px) + RGB + ToTensor + Normalize, without
    torchvision: shortest side to n_px (long side int(n_px·long/short)), PIL bicubic; crop offsets
    int(round((size - n_px) / 2)) (torchvision's; Python rounds half to even, so this can differ by one pixel from
    the (size - n_px) // 2 of transformers' CLIP processor); float32 /255; CLIP mean/std."""
    import torch
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(np.asarray(image)))
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    nw, nh = (n_px, int(n_px * long / short)) if w <= h else (int(n_px * long / short), n_px)
    if (nw, nh) != (w, h):
        pil = pil.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - n_px) / 2.0)), int(round((nw - n_px) / 2.0))
    pil = pil.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    x = torch.from_numpy(np.array(pil, np.uint8)).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def blip_tokenizer(bert_dir: Path) -> Any:
    """blip.py init_tokenizer (L16-21) on a local bert-base-uncased: [DEC] as bos, [ENC] as an extra special token."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardMetric(UserWeightsPromptMetric):
    """The registry's ``imagereward``: the standardised reward of ImageReward.score()."""

    WEIGHT_ID = "imagereward"
    MAX_TOKENS = MAX_TEXT_TOKENS
    IMPL = "imagereward-1"
    DEFINITION = f"(MLP(BLIP [CLS] feature) - {IR_MEAN}) / {IR_STD}, ImageReward.score()"
    TRUNCATION = "BERT WordPiece, [CLS] + 33 tokens + [SEP]"
    FLAG_NOTE = "prompt truncated to 35 tokens"

    @classmethod
    def _paths(cls, path: Path) -> tuple[Path, Path, Path]:
        folder = path.parent if path.is_file() else path  # ImageReward.pt itself, or its folder
        ckpt = path if path.is_file() else require_file(folder, "ImageReward.pt", cls.WEIGHT_ID, "the reward model")
        med = require_file(folder, "med_config.json", cls.WEIGHT_ID, "BLIP's BERT config, from the same repo")
        for sub in BERT_DIRS:
            if (folder / sub / "vocab.txt").is_file():
                return ckpt, med, folder / sub
        from evalkit.weights.user import hf_cached

        for repo in ("google-bert/bert-base-uncased", "bert-base-uncased"):
            snap = hf_cached(repo)
            if snap is not None and (snap / "vocab.txt").is_file():
                return ckpt, med, snap
        raise MissingWeightsError(f"imagereward: no bert-base-uncased vocab.txt in {folder} or {folder / 'bert-base-uncased'} "
                                  "(nor google-bert/bert-base-uncased in the local Hugging Face cache); copy "
                                  "vocab.txt from https://huggingface.co/google-bert/bert-base-uncased next to ImageReward.pt")

    @classmethod
    def weight_files(cls, path: Path) -> list[Path]:
        ckpt, med, bert = cls._paths(path)
        return [ckpt, med, bert / "vocab.txt"] + [p for p in (bert / "tokenizer_config.json",) if p.is_file()]

    def _load(self, path: Path, device: str) -> None:
        ckpt, med, bert = self._paths(path)
        self.model = load_imagereward(ckpt, med).to(device)
        self.tokenizer = blip_tokenizer(bert)

    def _score(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        import torch

        full = self.tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS,
                             return_tensors="pt")
        px = torch.stack([imagereward_preprocess(i) for i in images]).to(self.device)
        with torch.inference_mode():
            r = self.model(px, enc.input_ids.to(self.device), enc.attention_mask.to(self.device))
        return r.double().cpu().numpy(), [len(ids) > MAX_TEXT_TOKENS for ids in full]


__all__ = ["ImageRewardMetric", "VIT_LARGE", "blip_tokenizer", "build_model", "imagereward_preprocess",
           "load_imagereward"]
