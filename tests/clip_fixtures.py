"""A tiny, randomly initialised transformers CLIP with CLIP's real BPE vocab, saved like a hub checkpoint.

No CLIP weights exist on these machines (../shared/notes/environment.md), so CLIP-score code is tested on this."""

from __future__ import annotations

from pathlib import Path


def build_tiny_clip(out_dir: Path, eos_token_id: int = 2, seed: int = 0) -> Path:
    """Write a 2-layer CLIP (width 32, 77 text positions, 224 px images) with tokenizer and PIL image processor.

    eos_token_id=2 is the legacy value of openai's configs (transformers then pools at argmax(input_ids));
    49407 makes transformers pool at the first EOS token instead."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from evalkit.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
            patch_size=32, hidden_act="quick_gelu",
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok).save_pretrained(out_dir)
    return out_dir


def photos() -> list:
    """Real photographs of several aspect ratios (landscape, portrait, square, gray) as HWC uint8."""
    import matplotlib.cbook
    import numpy as np
    import skimage.data as d
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        hopper = np.asarray(im.convert("RGB"))
    cam = d.camera()
    return [d.astronaut(), d.chelsea(), d.coffee(), hopper, np.ascontiguousarray(d.rocket()[:, :300]),
            np.stack([cam] * 3, axis=2)]
