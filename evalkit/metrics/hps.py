"""HPSv2.1 (Wu et al., "Human Preference Score v2", 2023; tgxs002/HPSv2): an open_clip ViT-H-14 fine-tuned on
human preferences. Prompt metric: per (image, prompt), higher is better; also as ``hps_v21_drop``.

Reference scoring code (hpsv2 1.2.0 on PyPI == github tgxs002/HPSv2 @866735e):
  * hpsv2/img_score.py L20-38: create_model_and_transforms('ViT-H-14', ..., light_augmentation=True) -> the eval
    transform image_transform(224, is_train=False, resize_longest_max=True) (src/open_clip/factory.py L368-376);
  * L42: score(..., hps_version="v2.0") -- the default is v2.0; v2.1 is HPS_v2.1_compressed.pt (utils.py L14-17);
  * L54-56: torch.load(cp); model.load_state_dict(checkpoint['state_dict']) (strict: every laion weight replaced);
  * L88-97: features from model(image, text), which L2-normalises both (src/open_clip/model.py L246-255);
    hps_score = diagonal(image_features @ text_features.T).
So HPS = cos(E_image, E_text): no ×100 and no logit scale (papers often print ×100; evalkit does not).

evalkit runs it without open_clip or torchvision (neither imports on a CPU-only torch here):
  * the checkpoint is read with torch.load(weights_only=True) (no pickled code runs) and its open_clip state dict
    is converted key by key to a transformers CLIPModel of the same ViT-H-14 shape (strict: a missing, unexpected
    or mis-shaped key is an error naming the file);
  * image: src/open_clip/transform.py L141-157 with ResizeMaxSize (L26-49): RGB, /255, scale the LONGER side to
    224 with bicubic interpolation on the float tensor (antialias on, torchvision >= 0.17's default for tensors;
    HPSv2 pins no torchvision), no clamp, zero-pad to 224×224 (left/top get the smaller half), OpenAI mean/std;
  * text: open_clip's tokenizer (src/open_clip/tokenizer.py L60-69, L139-188): ftfy.fix_text, html.unescape twice,
    whitespace collapsed, lower-cased CLIP BPE, [SOT] + tokens + [EOT], cut to 77 keeping EOT, pooled at EOT;
  * fp32 (the reference autocasts to fp16 on CUDA: ~1e-3 noise in its cosines), cosine in float64.
Architecture: ViT-H-14 (HPSv2 uses no other), or an ``open_clip_config.json`` next to the checkpoint (open_clip's
model-config format), which is how tests run a tiny model of the same structure.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.metrics.clip_score import CLIP_MEAN, CLIP_STD, truncate_keep_eos
from evalkit.metrics.user_weights import UserWeightsPromptMetric
from evalkit.weights.user import require_file

HPS_FILE = "HPS_v2.1_compressed.pt"
CONFIG_FILE = "open_clip_config.json"
# hpsv2/src/open_clip/model_configs/ViT-H-14.json
VIT_H_14: dict[str, Any] = {"embed_dim": 1024,
                            "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                                           "patch_size": 14},
                            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                                         "layers": 24}}


def hf_clip_config(cfg: Mapping[str, Any]) -> Any:
    """The transformers CLIPConfig equivalent to an open_clip model config (ViT image tower, CLIP text tower,
    GELU, LayerNorm eps 1e-5); anything else is refused rather than converted wrongly."""
    from transformers import CLIPConfig

    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if cfg.get("quick_gelu") or v.get("timm_model_name") or t.get("hf_model_name"):
        raise EvalkitError("HPS: only GELU ViT + CLIP-text open_clip models (ViT-H-14) are supported")
    return CLIPConfig(
        text_config=dict(vocab_size=t["vocab_size"], hidden_size=t["width"],
                         intermediate_size=int(t["width"] * t.get("mlp_ratio", 4.0)), num_hidden_layers=t["layers"],
                         num_attention_heads=t["heads"], max_position_embeddings=t["context_length"],
                         hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=0, projection_dim=cfg["embed_dim"]),
        vision_config=dict(hidden_size=v["width"], intermediate_size=int(v["width"] * v.get("mlp_ratio", 4.0)),
                           num_hidden_layers=v["layers"], num_attention_heads=v["width"] // v.get("head_width", 64),
                           image_size=v["image_size"], patch_size=v["patch_size"], hidden_act="gelu",
                           layer_norm_eps=1e-5, projection_dim=cfg["embed_dim"]),
        projection_dim=cfg["embed_dim"])


def open_clip_to_hf(sd: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip CLIP (ViT + built-in text tower) state dict -> transformers CLIPModel state dict, float32.
    KeyError names any key left unmapped."""
    sd = {(k[len("module."):] if k.startswith("module.") else k): v.float() for k, v in sd.items()}
    out: dict[str, Any] = {"logit_scale": sd.pop("logit_scale")}

    def blocks(src: str, dst: str) -> None:
        n = 1 + max((int(k[len(src):].split(".")[0]) for k in sd if k.startswith(src)), default=-1)
        for i in range(n):
            s, d = f"{src}{i}.", f"{dst}{i}."
            # open_clip packs q, k, v in one in_proj; transformers keeps three projections.
            for part, name in zip(sd.pop(s + "attn.in_proj_weight").chunk(3), ("q", "k", "v")):
                out[d + f"self_attn.{name}_proj.weight"] = part
            for part, name in zip(sd.pop(s + "attn.in_proj_bias").chunk(3), ("q", "k", "v")):
                out[d + f"self_attn.{name}_proj.bias"] = part
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for p in ("weight", "bias"):
                    out[d + f"{b}.{p}"] = sd.pop(s + f"{a}.{p}")

    blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.")
    blocks("transformer.resblocks.", "text_model.encoder.layers.")
    renames = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
               "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
               "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
               "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
               "positional_embedding": "text_model.embeddings.position_embedding.weight"}
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):
        renames.update({f"{a}.weight": f"{b}.weight", f"{a}.bias": f"{b}.bias"})
    for a, b in renames.items():
        out[b] = sd.pop(a)
    # open_clip multiplies x @ proj (width × embed); a Linear stores embed × width.
    out["visual_projection.weight"] = sd.pop("visual.proj").T.contiguous()
    out["text_projection.weight"] = sd.pop("text_projection").T.contiguous()
    sd.pop("attn_mask", None)  # a buffer some open_clip versions saved; transformers builds its own causal mask
    if sd:
        raise KeyError(f"unmapped open_clip keys: {sorted(sd)[:6]}")
    return out


def load_hps_model(ckpt: Path, cfg: Mapping[str, Any]) -> Any:
    """HPS checkpoint -> transformers CLIPModel in eval mode, fp32. No pickled code runs (weights_only=True)."""
    import torch
    from transformers import CLIPModel

    try:
        obj = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (a non-tensor object), a truncated file, not a torch file
        raise EvalkitError(f"hps_v21: cannot read {ckpt} as a weights-only torch checkpoint "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise EvalkitError(f"hps_v21: {ckpt} holds no state dict (expected {{'state_dict': ...}})")
    try:
        converted = open_clip_to_hf(sd)
    except KeyError as e:
        raise EvalkitError(f"hps_v21: {ckpt} is not an open_clip ViT CLIP checkpoint (missing or extra key {e})") from None
    try:
        from transformers.initialization import no_init_weights  # skip a 1B-parameter random init
    except ImportError:  # pragma: no cover - other transformers versions
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = CLIPModel(hf_clip_config(cfg))
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as e:  # missing/unexpected keys or a size mismatch: a different architecture
        raise EvalkitError(f"hps_v21: {ckpt} does not match the {'ViT-H-14' if cfg is VIT_H_14 else 'configured'} "
                           f"architecture: {str(e).splitlines()[0][:300]}") from None
    return model.eval()


def hps_preprocess(image: Any, size: int = 224, antialias: bool = True) -> Any:
    """HWC uint8 (or PIL) -> float32 tensor [3, size, size]: HPSv2's eval transform (see the module docstring)."""
    import torch
    from PIL import Image

    a = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    x = torch.from_numpy(np.array(a[:, :, :3], dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    h, w = x.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        nh, nw = round(h * scale), round(w * scale)
        x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False,
                                            antialias=antialias)[0]
        ph, pw = size - nh, size - nw
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def open_clip_clean(text: str) -> str:
    """open_clip's text cleaning before BPE (tokenizer.py basic_clean + whitespace_clean); the CLIP tokenizer
    lower-cases. Without it, &amp;, curly quotes and mojibake tokenise differently from the reference."""
    import html
    import re

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class HPSv21Metric(UserWeightsPromptMetric):
    """The registry's ``hps_v21``: cos(image, prompt) under the HPSv2.1 checkpoint."""

    WEIGHT_ID = "hps_v21"
    MAX_TOKENS = 77
    IMPL = "hps-1"
    DEFINITION = "cos(image embedding, prompt embedding) under HPS_v2.1_compressed.pt (hpsv2 img_score.py)"
    TRUNCATION = "open_clip: first 76 tokens plus the end-of-text token"
    FLAG_NOTE = "prompt truncated to 77 tokens"

    @classmethod
    def _paths(cls, path: Path) -> tuple[Path, Path | None]:
        ckpt = path if path.is_file() else require_file(path, HPS_FILE, cls.WEIGHT_ID, "the HPSv2.1 checkpoint")
        cfg = ckpt.parent / CONFIG_FILE
        return ckpt, (cfg if cfg.is_file() else None)

    @classmethod
    def weight_files(cls, path: Path) -> list[Path]:
        ckpt, cfg = cls._paths(path)
        return [ckpt] + ([cfg] if cfg else [])

    def _load(self, path: Path, device: str) -> None:
        from evalkit.clip_tokenizer import build_clip_tokenizer

        ckpt, cfg_path = self._paths(path)
        cfg = VIT_H_14
        if cfg_path is not None:
            try:
                c = json.loads(cfg_path.read_text())
                cfg = c.get("model_cfg", c)  # open_clip's folder layout nests it; a bare model config does not
                lacking = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
            except (ValueError, AttributeError) as e:
                raise EvalkitError(f"hps_v21: {cfg_path} is not JSON ({type(e).__name__}: {e})") from None
            if lacking:
                raise EvalkitError(f"hps_v21: {cfg_path} is not an open_clip model config (no {', '.join(lacking)})")
        self.model = load_hps_model(ckpt, cfg).to(device)
        self.image_size = int(cfg["vision_cfg"]["image_size"])
        self.tokenizer = build_clip_tokenizer()
        self.context = int(cfg["text_cfg"]["context_length"])

    def _tokens(self, prompts: Sequence[str]) -> tuple[Any, Any, list[bool]]:
        import torch

        eos = int(self.tokenizer.eos_token_id)
        seqs, cut = [], []
        for p in prompts:
            ids = self.tokenizer(open_clip_clean(p), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            ids, dropped = truncate_keep_eos(ids, self.context, eos)
            seqs.append(ids)
            cut.append(dropped > 0)
        ids_t = torch.zeros(len(seqs), self.context, dtype=torch.long)  # open_clip pads with 0
        mask = torch.zeros_like(ids_t)
        for i, s in enumerate(seqs):
            ids_t[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return ids_t, mask, cut

    def _score(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        import torch

        ids, mask, cut = self._tokens(prompts)
        eos_pos = mask.sum(1) - 1
        px = torch.stack([hps_preprocess(i, self.image_size) for i in images]).to(self.device)
        with torch.inference_mode():
            img = self.model.visual_projection(self.model.vision_model(pixel_values=px).pooler_output).double()
            h = self.model.text_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            txt = self.model.text_projection(h[torch.arange(len(prompts)), eos_pos.to(self.device)]).double()
        cos = (img * txt).sum(-1) / (img.norm(dim=-1) * txt.norm(dim=-1))
        return cos.cpu().numpy(), cut


__all__ = ["HPSv21Metric", "VIT_H_14", "hf_clip_config", "hps_preprocess", "load_hps_model", "open_clip_clean",
           "open_clip_to_hf"]
