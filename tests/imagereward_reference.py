"""Test-only: run THUDM/ImageReward's own scoring code (image-reward 1.5: ImageReward.py, blip.py, blip_pretrain.py,
vit.py, med.py) where it cannot import as a package, and a tiny BERT vocabulary.

What cannot import on a CPU-only torch with transformers 5, and the shim each gets (all removed on exit; the
reference files themselves run unchanged):
  * ImageReward/__init__.py imports openai `clip`, torchvision and diffusers: the package is entered without it;
  * ImageReward.py L17 `torchvision.transforms`: the PIL code paths of Compose/Resize/CenterCrop/ToTensor/Normalize,
    transcribed from torchvision 0.2x (transforms.py, functional.py, _functional_pil.py; NOTES.md tv_check.py ran
    ImageReward's _transform on torchvision 0.28's real code and matched evalkit bit for bit);
  * vit.py L12-15 timm: timm's own PatchEmbed / DropPath / trunc_normal_ files, without timm/__init__ (torchvision);
  * med.py L31-36 imports apply_chunking_to_forward, find_pruneable_heads_and_indices, prune_linear_layer from
    transformers.modeling_utils and calls PreTrainedModel.invert_attention_mask / get_head_mask / init_weights, which
    transformers 5 removed or changed: re-added with transformers 4's definitions (exact for an all-ones encoder
    mask and no head mask);
  * blip.py L17 BertTokenizer.from_pretrained('bert-base-uncased') (a hub download) points at a local folder, and
    L20 reads tokenizer.additional_special_tokens_ids (transformers 5: extra_special_tokens).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

REFERENCE_PACKAGES = ("ImageReward", "timm", "fairscale")


def reference_available() -> str | None:
    """None when the reference code can run here, else why not (the reference test is then skipped)."""
    missing = [p for p in REFERENCE_PACKAGES if importlib.util.find_spec(p) is None]
    return None if not missing else (f"{', '.join(missing)} not installed (pip install --no-deps image-reward==1.5 "
                                     f"timm==1.0.31 fairscale==0.4.13)")


def make_tiny_vocab(bert_dir: Path) -> Path:
    """30522 WordPiece tokens with bert-base-uncased's special ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103) and real words for the test prompts."""
    words = ("a photo of an astronaut cat lying on rug cup coffee rocket launch pad at dusk portrait woman "
             "baroque style lavish oil painting ornate gilded detail number the and with in red blue green "
             "high quality 4k trending artstation , . ! ? - '").split()
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for w in words + pieces:
        if w not in vocab:
            vocab.append(w)
    vocab += [f"tok{i}" for i in range(30522 - len(vocab))]
    bert_dir.mkdir(parents=True, exist_ok=True)
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    return bert_dir


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _tv_transforms() -> types.ModuleType:
    """torchvision.transforms' PIL paths as ImageReward._transform uses them (torchvision 0.2x)."""
    from PIL import Image

    modes = {_InterpolationMode.NEAREST: Image.NEAREST, _InterpolationMode.BILINEAR: Image.BILINEAR,
             _InterpolationMode.BICUBIC: Image.BICUBIC}

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, img):
            for t in self.transforms:
                img = t(img)
            return img

    class Resize:  # functional.resize -> _compute_resized_output_size (int() of the long side), PIL resize
        def __init__(self, size, interpolation=_InterpolationMode.BILINEAR):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            return img if (new_w, new_h) == (w, h) else img.resize((new_w, new_h), modes[self.interpolation])

    class CenterCrop:  # functional.center_crop: int(round((h - ch) / 2.0))
        def __init__(self, size):
            self.size = (size, size) if isinstance(size, int) else tuple(size)

        def __call__(self, img):
            w, h = img.size
            ch, cw = self.size
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            return img.crop((left, top, left + cw, top + ch))

    class ToTensor:  # functional.to_tensor on a PIL image
        def __call__(self, pic):
            img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
            return img.to(dtype=torch.get_default_dtype()).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, t):
            return t.sub(torch.as_tensor(self.mean).view(-1, 1, 1)).div(torch.as_tensor(self.std).view(-1, 1, 1))

    m = types.ModuleType("torchvision.transforms")
    m.Compose, m.Resize, m.CenterCrop, m.ToTensor, m.Normalize = Compose, Resize, CenterCrop, ToTensor, Normalize
    m.InterpolationMode = _InterpolationMode
    return m


def _pkg(name: str, path: Path | None = None) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__path__ = [str(path)] if path else []
    m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    m.__spec__.submodule_search_locations = m.__path__
    sys.modules[name] = m
    return m


@contextlib.contextmanager
def reference_modules(bert_dir: Path) -> Iterator[dict[str, Any]]:
    """Yield ImageReward's modules (ImageReward, blip, blip_pretrain, vit) with the shims above; remove every shim
    and every module imported here on exit."""
    import transformers
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu
    from transformers import PreTrainedModel

    before = set(sys.modules)
    saved: dict[tuple[Any, str], Any] = {}
    try:
        for n in ("apply_chunking_to_forward", "prune_linear_layer", "find_pruneable_heads_and_indices"):
            saved[(mu, n)] = getattr(mu, n, None)
            setattr(mu, n, getattr(pu, n, None) or (lambda *a, **k: (_ for _ in ()).throw(NotImplementedError(n))))

        def invert_attention_mask(self, m):  # transformers 4 modeling_utils
            ext = m[:, None, :, :] if m.dim() == 3 else m[:, None, None, :]
            return (1.0 - ext.to(dtype=self.dtype)) * torch.finfo(self.dtype).min

        def get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
            if head_mask is not None:
                raise NotImplementedError("ImageReward passes no head mask")
            return [None] * num_hidden_layers

        def init_weights(self):
            self.apply(self._init_weights)

        for n, f in (("invert_attention_mask", invert_attention_mask), ("get_head_mask", get_head_mask),
                     ("init_weights", init_weights)):
            saved[(PreTrainedModel, n)] = getattr(PreTrainedModel, n, None)
            setattr(PreTrainedModel, n, f)
        tv = _pkg("torchvision")
        tv.transforms = _tv_transforms()
        sys.modules["torchvision.transforms"] = tv.transforms
        troot = Path(importlib.util.find_spec("timm").origin).parent
        _pkg("timm", troot)
        _pkg("timm.layers", troot / "layers")
        pe, drop, wi = (importlib.import_module(f"timm.layers.{n}") for n in ("patch_embed", "drop", "weight_init"))
        _pkg("timm.models", troot / "models")
        vt = types.ModuleType("timm.models.vision_transformer")
        vt.PatchEmbed, vt._cfg = pe.PatchEmbed, (lambda url="", **kw: {"url": url, **kw})
        reg = types.ModuleType("timm.models.registry")
        reg.register_model = lambda f: f
        lay = types.ModuleType("timm.models.layers")
        lay.trunc_normal_, lay.DropPath = wi.trunc_normal_, drop.DropPath
        hlp = types.ModuleType("timm.models.helpers")
        hlp.named_apply = hlp.adapt_input_conv = lambda *a, **k: (_ for _ in ()).throw(NotImplementedError)
        hub = types.ModuleType("timm.models.hub")
        hub.download_cached_file = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no downloads"))
        for m in (vt, reg, lay, hlp, hub):
            sys.modules[m.__name__] = m
        root = Path(importlib.util.find_spec("ImageReward").origin).parent
        _pkg("ImageReward", root)
        _pkg("ImageReward.models", root / "models")
        _pkg("ImageReward.models.BLIP", root / "models" / "BLIP")
        blip = importlib.import_module("ImageReward.models.BLIP.blip")

        class _LocalBert(transformers.BertTokenizer):
            @property
            def additional_special_tokens_ids(self):
                return self.convert_tokens_to_ids(list(self.extra_special_tokens))

            @classmethod
            def from_pretrained(cls, name, *a, **k):
                assert name == "bert-base-uncased", name
                return super().from_pretrained(str(bert_dir), *a, **k)

        blip.BertTokenizer = _LocalBert
        yield {"blip": blip, "blip_pretrain": importlib.import_module("ImageReward.models.BLIP.blip_pretrain"),
               "vit": importlib.import_module("ImageReward.models.BLIP.vit"),
               "ImageReward": importlib.import_module("ImageReward.ImageReward")}
    finally:
        for (obj, n), v in saved.items():
            if v is None:
                with contextlib.suppress(AttributeError):
                    delattr(obj, n)
            else:
                setattr(obj, n, v)
        for n in set(sys.modules) - before:
            if n.split(".")[0] in ("torchvision", "timm", "ImageReward", "fairscale"):
                del sys.modules[n]
