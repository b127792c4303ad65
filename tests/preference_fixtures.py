"""Tiny random builds of the checkpoints the user-weight metrics read, saved as the real ones are laid out (no real
weights exist on these machines), and helpers that import reference code that cannot import here as a package.

    build_tiny_pickscore(dir)   transformers CLIPModel with ViT-H/14's structural choices, PickScore_v1's layout
    build_tiny_clip336(dir)     transformers CLIP at 336 px, patch 14 (openai/clip-vit-large-patch14-336's layout)
    open_clip_modules()         open-clip-torch's model.py + tokenizer.py without open_clip/__init__ (torchvision)
    build_tiny_hps(dir, half)   open_clip CLIP saved as HPS_v2.1_compressed.pt is, plus open_clip_config.json
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

TINY_OPEN_CLIP = {"embed_dim": 24,
                  "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def build_tiny_pickscore(model_dir: Path, proc_dir: Path | None = None, eos_token_id: int = 2, seed: int = 0) -> Path:
    """PickScore_v1's layout (config.json + model.safetensors) with H/14's choices (GELU, patch 14, 224 px, 77
    text positions, CLIP's 49408 BPE) and a learnt-looking logit_scale; the laion processor folder if asked."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from evalkit.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=tok.bos_token_id, eos_token_id=eos_token_id, pad_token_id=1, projection_dim=24),
        vision_config=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=3,
                           image_size=224, patch_size=14, hidden_act="gelu", projection_dim=24),
        projection_dim=24)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0) - 0.137)  # PickScore's learnt scale is near 100, not 1/0.07
    model.save_pretrained(model_dir)
    if proc_dir is not None:  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K: shortest edge 224, crop 224, OpenAI mean/std
        CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok).save_pretrained(proc_dir)
    return model_dir


def build_tiny_clip336(out_dir: Path, seed: int = 0, image_size: int = 336) -> Path:
    """openai/clip-vit-large-patch14-336's layout (config.json, model.safetensors, preprocessor_config.json)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=24),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=14, hidden_act="quick_gelu", projection_dim=24),
        projection_dim=24)
    torch.manual_seed(seed)
    CLIPModel(cfg).eval().save_pretrained(out_dir)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(out_dir)
    return out_dir


@contextlib.contextmanager
def _torchvision_stub():
    """open_clip's utils.py imports torchvision.ops.misc.FrozenBatchNorm2d at import time (for ResNets only). A stub
    lives in sys.modules only while the reference modules import; transformers is imported first, because its
    torchvision probe (find_spec) raises on a module without __spec__."""
    import torch
    import transformers  # noqa: F401

    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc"]
    saved = {n: sys.modules.get(n) for n in names}
    tv, ops, misc = (types.ModuleType(n) for n in names)
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    tv.ops, ops.misc = ops, misc
    sys.modules.update(dict(zip(names, (tv, ops, misc))))
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


_OPEN_CLIP: dict[str, Any] = {}


def open_clip_modules() -> dict[str, Any]:
    """open-clip-torch's `model` and `tokenizer` modules, imported under a private package name so that
    open_clip/__init__.py (which imports torchvision transforms) never runs and nothing named open_clip is left
    half-imported for other tests."""
    if _OPEN_CLIP:
        return _OPEN_CLIP
    spec = importlib.util.find_spec("open_clip")
    root = Path(list(spec.submodule_search_locations)[0])
    name = "_evalkit_test_open_clip"
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(root)]
    pkg.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    pkg.__spec__.submodule_search_locations = pkg.__path__
    sys.modules[name] = pkg
    with _torchvision_stub():
        _OPEN_CLIP.update({s: importlib.import_module(f"{name}.{s}") for s in ("model", "tokenizer")})
    assert "torchvision" not in sys.modules
    return _OPEN_CLIP


def tiny_open_clip(cfg: dict = TINY_OPEN_CLIP, seed: int = 0) -> Any:
    """open_clip's own CLIP class (GELU, no quick_gelu, as ViT-H-14), every parameter moved off its init."""
    import torch

    m = open_clip_modules()["model"]
    torch.manual_seed(seed)
    model = m.CLIP(cfg["embed_dim"], m.CLIPVisionCfg(**cfg["vision_cfg"]), m.CLIPTextCfg(**cfg["text_cfg"]),
                   quick_gelu=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.02 if p.ndim > 1 else 0.1))
    return model


def build_tiny_hps(out_dir: Path, half: bool = False, seed: int = 0) -> Path:
    """HPS_v2.1_compressed.pt as hpsv2 saves it, torch.save({'state_dict': ..., 'epoch': ...}), and the tiny
    architecture as an open_clip model config next to it."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    sd = tiny_open_clip(seed=seed).state_dict()
    if half:
        sd = {k: v.half() for k, v in sd.items()}
    torch.save({"state_dict": sd, "epoch": 1}, str(out_dir / "HPS_v2.1_compressed.pt"))
    (out_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    return out_dir


def photos() -> list:
    """Real photographs of several shapes (landscape, portrait, square, gray) as HWC uint8."""
    import numpy as np
    import skimage.data as d

    cam = d.camera()
    return [d.astronaut(), d.chelsea(), d.coffee(), np.ascontiguousarray(d.rocket()[:, :300]),
            np.stack([cam] * 3, axis=2)]
