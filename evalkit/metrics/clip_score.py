"""CLIP score (prompt-image alignment) with correct handling of prompts longer than CLIP's 77 tokens.

Public API (wired into the metrics registry elsewhere; nothing here reads a run directory)::

    CLIP_DEFAULT_SPEC = "openai/clip-vit-large-patch14"
    ClipScorer(spec=CLIP_DEFAULT_SPEC, device="cpu", batch_size=16, dtype=None)
        .id: str                 # "hf:<repo>@<snapshot>", "local:<dir>" or "open_clip:<arch>:<ckpt>"
        .max_tokens: int         # text context length (77 for CLIP)
        .score(images, prompts) -> ClipScoreResult
        .image_embeddings(images) -> torch.Tensor [N, D]    (projected, not normalised)
        .text_embeddings(prompts) -> (torch.Tensor [N, D], list[TokenInfo])
        .tokenize(prompts) -> (input_ids [N, L] long, attention_mask [N, L], eos_positions [N], list[TokenInfo])
    @dataclass ClipScoreResult(scores: np.ndarray [N] float64, cosine: np.ndarray [N] float64,
                               tokens: list[TokenInfo], n_truncated: int, model_id: str)
    @dataclass TokenInfo(n_tokens: int, dropped: int)   # counts include <|startoftext|>/<|endoftext|>
    truncate_keep_eos(ids: list[int], max_len: int, eos_id: int) -> tuple[list[int], int]
    clip_preprocess(image, size=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray float32 [3, crop, crop]
    resolve_clip_spec(spec) -> tuple[str, str]   # ("hf" | "local" | "open_clip", path or "arch:ckpt")

Definitions and choices:
  * score = 100 * max(cos(E_image, E_text), 0) per image (the CLIPScore formula torchmetrics documents). Note that
    torchmetrics' implementation clamps the *batch mean* at 0 rather than each image; with real CLIP cosines are
    positive and the two agree. ``cosine`` carries the unclamped values.
  * Prompts longer than ``max_tokens`` are tokenised without truncation, then cut to the first max_tokens-1
    tokens plus <|endoftext|> (as open_clip's tokenizer does). torchmetrics instead slices the ids to 77, which
    drops the EOS token (torchmetrics #2000/#2883), so CLIP pools an arbitrary word.
  * Pooling: CLIP's text embedding is the final hidden state at the EOS position. transformers' CLIPTextTransformer
    finds it by argmax(input_ids) when config.eos_token_id == 2 (the legacy value in openai's configs; works because
    EOS has the largest id) and otherwise by the first id equal to config.eos_token_id. To be independent of that
    config quirk, this module takes the hidden state at the EOS position it placed itself
    (``text_model(...).last_hidden_state[i, eos_pos[i]]``, then ``text_projection``); tests check that this equals
    ``CLIPModel.get_text_features`` on the same ids.
  * Images: CLIP's preprocessing done with PIL/numpy (no torchvision): RGB, resize the shortest side to 224 with
    PIL bicubic on uint8 (long side int(224 * long / short)), center crop 224 (offsets (h-224)//2, (w-224)//2),
    scale to [0, 1], normalise with CLIP's mean/std. Same as transformers' CLIPImageProcessorPil (tested); sizes
    and mean/std come from the model directory's preprocessor_config.json when present.
  * Weights are never downloaded: a Hugging Face id is looked up in the local HF cache only
    (``snapshot_download(local_files_only=True)``, no network call), else MissingWeightsError says how to supply
    them. A local directory is a transformers CLIP (``save_pretrained``); if it has no tokenizer files, CLIP's BPE
    vocab shipped with open-clip-torch is used (evalkit.clip_tokenizer.build_clip_tokenizer).
  * ``open_clip:ARCH:/path/to/ckpt`` (a config shipped with open_clip plus a weights file) or
    ``open_clip:/path/to/folder`` (open_clip_config.json plus weights, the layout of laion's Hugging Face repos; a
    folder without weights is refused rather than scored with random weights) uses open_clip's own model,
    tokenizer (which keeps EOT when truncating) and preprocessing; open_clip imports torchvision, so it only works
    where torchvision does (not on the CPU machines here): the import is lazy and failure is a clear EvalkitError.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import EvalkitError, MissingWeightsError

CLIP_DEFAULT_SPEC = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_HOW_TO_SUPPLY = (
    "evalkit never downloads weights. Supply them in one of these ways: "
    "(1) on a machine with network run `hf download {spec}` (huggingface_hub CLI) and copy the Hugging Face cache "
    "(HF_HOME, default ~/.cache/huggingface) here; "
    "(2) pass a local directory holding a transformers CLIP (config.json + model weights, e.g. from "
    "CLIPModel.save_pretrained) as --clip-model /path/to/dir; "
    "(3) pass an open_clip checkpoint as --clip-model open_clip:ARCH:/path/to/ckpt, or an open_clip folder "
    "(open_clip_config.json + weights) as open_clip:/path/to/folder (both need torchvision)."
)


@dataclass
class TokenInfo:
    """Token count of one prompt (with start/end tokens) and how many were dropped to fit the context."""

    n_tokens: int
    dropped: int = 0

    @property
    def truncated(self) -> bool:
        return self.dropped > 0


@dataclass
class ClipScoreResult:
    scores: np.ndarray  # 100 * max(cos, 0), float64 [N]
    cosine: np.ndarray  # unclamped cosine similarity, float64 [N]
    tokens: list[TokenInfo] = field(default_factory=list)
    n_truncated: int = 0
    model_id: str = ""


def truncate_keep_eos(ids: list[int], max_len: int, eos_id: int) -> tuple[list[int], int]:
    """Cut a token-id list (BOS ... EOS) to max_len keeping EOS last; returns (ids, number of tokens dropped)."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    ids = list(ids)
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)  # every CLIP sequence must end with EOS: pooling reads that position
    if len(ids) <= max_len:
        return ids, 0
    return ids[: max_len - 1] + [eos_id], len(ids) - max_len


def clip_preprocess(
    image: Any,
    size: int = 224,
    crop: int | tuple[int, int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """CLIP's image preprocessing with PIL/numpy: HWC uint8 array or PIL image -> float32 [3, crop_h, crop_w]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HWC image (0..255), got {a.dtype}")
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        pil = Image.fromarray(np.ascontiguousarray(a[:, :, :3]), mode="RGB")
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # int() truncates, as transformers does
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    x = np.asarray(pil.resize((new_w, new_h), resample=Image.BICUBIC))
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    if new_h < ch or new_w < cw:  # cannot happen when crop <= size; padding is not worth supporting
        raise ValueError(f"image resized to {new_h}x{new_w} is smaller than the crop {ch}x{cw}")
    top, left = (new_h - ch) // 2, (new_w - cw) // 2
    x = x[top : top + ch, left : left + cw]
    x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


OPEN_CLIP_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pth")


def open_clip_weights_in(folder: Path) -> list[Path]:
    """The weights files open_clip's `local-dir:` loader would consider (it picks one by a preference order)."""
    return sorted(p for g in OPEN_CLIP_WEIGHT_GLOBS for p in folder.glob(g) if p.is_file())


def resolve_clip_spec(spec: str) -> tuple[str, str]:
    """("local", dir) | ("hf", snapshot dir from the local cache) | ("open_clip", "ARCH:ckpt" or "local-dir:DIR");
    never downloads."""
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:") :]
        folder = Path(rest).expanduser()
        if folder.is_dir():  # open_clip's own folder layout (laion's Hugging Face repos): config + weights
            if not (folder / "open_clip_config.json").is_file():
                raise MissingWeightsError(f"{folder} is not an open_clip model folder: no open_clip_config.json "
                                          f"(from --clip-model {spec!r}); or pass open_clip:ARCH:/path/to/ckpt")
            if not open_clip_weights_in(folder):
                # open_clip itself would only warn and go on with random weights: a number that is not CLIP score.
                raise MissingWeightsError(f"{folder} has open_clip_config.json but no weights file "
                                          f"({', '.join(OPEN_CLIP_WEIGHT_GLOBS)}) (from --clip-model {spec!r})")
            return "open_clip", f"local-dir:{folder.resolve()}"
        arch, sep, ckpt = rest.partition(":")
        if not arch or not sep or not ckpt:
            raise EvalkitError(f"bad CLIP spec {spec!r}: expected open_clip:ARCH:/path/to/checkpoint or "
                               "open_clip:/path/to/folder (holding open_clip_config.json and the weights)")
        if not Path(ckpt).expanduser().is_file():
            raise MissingWeightsError(f"open_clip checkpoint not found: {ckpt} (from --clip-model {spec!r})")
        return "open_clip", f"{arch}:{Path(ckpt).expanduser()}"
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MissingWeightsError(f"{p} is not a transformers CLIP directory (no config.json). " +
                                      _HOW_TO_SUPPLY.format(spec=CLIP_DEFAULT_SPEC))
        return "local", str(p)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:  # a path, not an "org/name" hub id
        raise MissingWeightsError(f"CLIP model directory not found: {spec}. " +
                                  _HOW_TO_SUPPLY.format(spec=CLIP_DEFAULT_SPEC))
    from huggingface_hub import snapshot_download

    try:
        # local_files_only: a cache lookup, no network call (and so no 24 s of hub retries when offline).
        snap = snapshot_download(repo_id=spec, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError (bad id), ...
        raise MissingWeightsError(
            f"CLIP weights {spec!r} are not in the local Hugging Face cache ({type(e).__name__}). "
            + _HOW_TO_SUPPLY.format(spec=spec)
        ) from None
    if not (Path(snap) / "config.json").is_file():
        raise MissingWeightsError(f"the cached snapshot of {spec!r} at {snap} has no config.json (incomplete). "
                                  + _HOW_TO_SUPPLY.format(spec=spec))
    return "hf", snap


class ClipScorer:
    """Scores images against prompts with a CLIP model; see the module docstring for definitions."""

    def __init__(self, spec: str = CLIP_DEFAULT_SPEC, device: str | Any = "cpu", batch_size: int = 16,
                 dtype: Any = None) -> None:
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        kind, where = resolve_clip_spec(spec)
        self.kind = kind
        if kind == "open_clip":
            self._init_open_clip(where, dtype)
        else:
            self._init_transformers(Path(where), dtype)
            self.id = f"hf:{spec}@{Path(where).name}" if kind == "hf" else f"local:{where}"

    # ------------------------------------------------------------------------------------------ loading

    def _init_transformers(self, path: Path, dtype: Any) -> None:
        import torch
        from transformers import CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=dtype or torch.float32)
        except OSError as e:  # weights file missing next to config.json
            raise MissingWeightsError(f"cannot load CLIP from {path}: {e}. " +
                                      _HOW_TO_SUPPLY.format(spec=CLIP_DEFAULT_SPEC)) from None
        self.model.eval().to(self.device)
        self.tokenizer = self._load_tokenizer(path)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.eos_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        vis = int(self.model.config.vision_config.image_size)
        self.pre = {"size": vis, "crop": (vis, vis), "mean": CLIP_MEAN, "std": CLIP_STD}
        cfg = path / "preprocessor_config.json"
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            size = c.get("size", vis)
            crop = c.get("crop_size", vis)
            self.pre = {
                "size": int(size.get("shortest_edge", vis) if isinstance(size, dict) else size),
                "crop": (int(crop["height"]), int(crop["width"])) if isinstance(crop, dict) else (int(crop),) * 2,
                "mean": tuple(c.get("image_mean", CLIP_MEAN)),
                "std": tuple(c.get("image_std", CLIP_STD)),
            }

    @staticmethod
    def _load_tokenizer(path: Path) -> Any:
        from transformers import CLIPTokenizer

        if (path / "vocab.json").is_file() or (path / "tokenizer.json").is_file():
            return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        from evalkit.clip_tokenizer import build_clip_tokenizer

        return build_clip_tokenizer()  # CLIP's original BPE vocab, as shipped with open-clip-torch

    def _init_open_clip(self, where: str, dtype: Any) -> None:
        try:
            import open_clip  # imports torchvision
        except Exception as e:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
            raise EvalkitError(
                f"open_clip models need open_clip and a working torchvision, which cannot be imported here "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Use a transformers CLIP "
                "directory (--clip-model /path/to/dir) or run where torchvision works."
            ) from None
        if where.startswith("local-dir:"):  # config and weights from the folder; nothing else is read
            name, kwargs, self.id = where, {}, f"open_clip:{where[len('local-dir:'):]}"
        else:  # a config shipped with open_clip (or registered with open_clip.add_model_config) + a weights file
            name, _, ckpt = where.partition(":")
            kwargs, self.id = {"pretrained": ckpt}, f"open_clip:{name}:{ckpt}"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, device=self.device, **kwargs)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, ValueError, FileNotFoundError, KeyError) as e:  # unknown arch, weights not matching
            raise EvalkitError(f"open_clip could not load {self.spec!r}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}"[:600]) from None
        self.model = model.eval()
        if dtype is not None:
            self.model.to(dtype)
        self.oc_preprocess = preprocess
        self.max_tokens = int(getattr(self.tokenizer, "context_length", 77))

    # ------------------------------------------------------------------------------------------ text

    def tokenize(self, prompts: Sequence[str]) -> tuple[Any, Any, Any, list[TokenInfo]]:
        """Token ids (truncated keeping EOS, padded to the batch's longest), attention mask, EOS positions, info."""
        import torch

        if self.kind == "open_clip":
            raise EvalkitError("tokenize() is for transformers CLIP models; open_clip tokenizes in text_embeddings")
        seqs, infos = [], []
        for p in prompts:
            ids = self.tokenizer(p, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            n = len(ids) if ids and ids[-1] == self.eos_id else len(ids) + 1
            ids, dropped = truncate_keep_eos(ids, self.max_tokens, self.eos_id)
            seqs.append(ids)
            infos.append(TokenInfo(n_tokens=n, dropped=dropped))
        length = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        eos_pos = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)
        return input_ids, mask, eos_pos, infos

    def _open_clip_token_info(self, prompt: str) -> TokenInfo:
        enc = getattr(self.tokenizer, "encode", None)
        n = len(enc(prompt)) + 2 if callable(enc) else 0  # + start/end tokens; 0 = unknown for other tokenizers
        return TokenInfo(n_tokens=n, dropped=max(0, n - self.max_tokens))

    def text_embeddings(self, prompts: Sequence[str]) -> tuple[Any, list[TokenInfo]]:
        """Projected text embeddings [N, D] (pooled at EOS) and per-prompt token info."""
        import torch

        out, infos = [], []
        with torch.inference_mode():
            for i in range(0, len(prompts), self.batch_size):
                chunk = list(prompts[i : i + self.batch_size])
                if self.kind == "open_clip":
                    # open_clip's tokenizer truncates to context_length with EOT kept as the last token.
                    out.append(self.model.encode_text(self.tokenizer(chunk).to(self.device)).float())
                    infos += [self._open_clip_token_info(p) for p in chunk]
                    continue
                ids, mask, eos_pos, info = self.tokenize(chunk)
                h = self.model.text_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
                pooled = h.last_hidden_state[torch.arange(ids.shape[0], device=self.device), eos_pos.to(self.device)]
                out.append(self.model.text_projection(pooled).float())
                infos += info
        return torch.cat(out), infos

    # ------------------------------------------------------------------------------------------ images

    def preprocess(self, images: Sequence[Any]) -> Any:
        """CLIP pixel tensor [N, 3, H, W] from HWC uint8 arrays or PIL images."""
        import torch

        if self.kind == "open_clip":
            from PIL import Image

            pils = [i if isinstance(i, Image.Image) else Image.fromarray(np.asarray(i)).convert("RGB")
                    for i in images]
            return torch.stack([self.oc_preprocess(p) for p in pils])
        p = self.pre
        return torch.from_numpy(np.stack([clip_preprocess(i, p["size"], p["crop"], p["mean"], p["std"])
                                          for i in images]))

    def image_embeddings(self, images: Sequence[Any]) -> Any:
        """Projected image embeddings [N, D]."""
        import torch

        out = []
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                px = self.preprocess(images[i : i + self.batch_size]).to(self.device, dtype)
                if self.kind == "open_clip":
                    out.append(self.model.encode_image(px).float())
                else:
                    pooled = self.model.vision_model(pixel_values=px).pooler_output
                    out.append(self.model.visual_projection(pooled).float())
        return torch.cat(out)

    # ------------------------------------------------------------------------------------------ score

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> ClipScoreResult:
        """Per-image 100 * max(cos, 0) between images[i] and prompts[i], plus truncation counts."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        if not images:
            return ClipScoreResult(np.zeros(0), np.zeros(0), [], 0, self.id)
        img = self.image_embeddings(images).double().cpu().numpy()
        txt, infos = self.text_embeddings(prompts)
        txt = txt.double().cpu().numpy()
        cos = (img * txt).sum(1) / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1))
        return ClipScoreResult(
            scores=100.0 * np.maximum(cos, 0.0),
            cosine=cos,
            tokens=infos,
            n_truncated=sum(1 for t in infos if t.truncated),
            model_id=self.id,
        )


# ---------------------------------------------------------------- the registry's "prompt" metric

_CLIP_KEYS: dict[str, str] = {}


def clip_model_spec(clip_model: str | None) -> str:
    """--clip-model, or the default CLIP."""
    return clip_model or CLIP_DEFAULT_SPEC


def clip_key(spec: str) -> str:
    """Cache key of CLIP scores: the spec, where it resolves (an HF snapshot hash names the exact weights), and
    for a local folder or checkpoint its files' sizes and mtimes, so retrained weights in the same place are not
    served stale scores. Resolving loads no model; MissingWeightsError propagates (the metric is then skipped)."""
    if spec not in _CLIP_KEYS:
        import hashlib

        from evalkit.metrics.registry import METRICS_VERSION

        kind, where = resolve_clip_spec(spec)
        target = Path(where.split(":", 1)[1] if kind == "open_clip" else where)
        files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        stamp = [(str(p.relative_to(target)) if p != target else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                 for p in files] if kind != "hf" else []
        blob = json.dumps([spec, where, stamp, METRICS_VERSION], sort_keys=True).encode()
        _CLIP_KEYS[spec] = hashlib.sha256(blob).hexdigest()[:16]
    return _CLIP_KEYS[spec]


class ClipPromptMetric:
    """The registry's CLIP score ("prompt" kind): 100 * max(cos, 0), prompts cut to 77 tokens keeping EOS.
    Per image it returns the score and whether the prompt was truncated."""

    FLAG_NOTE = "prompt truncated to 77 tokens"
    FLAG_COUNT = "n_truncated_prompts"

    def __init__(self, device: str = "cpu", clip_model: str | None = None, batch_size: int = 16) -> None:
        self.spec = clip_model_spec(clip_model)
        self.scorer = ClipScorer(self.spec, device=device, batch_size=batch_size)
        self.batch_size = batch_size
        self.key = clip_key(self.spec)

    @classmethod
    def result_key(cls, clip_model: str | None = None) -> str:
        return clip_key(clip_model_spec(clip_model))

    @classmethod
    def describe(cls, clip_model: str | None = None) -> dict[str, Any]:
        return {"model": clip_model_spec(clip_model),
                "truncation": "prompts over 77 CLIP tokens are cut keeping the end-of-text token"}

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Per-image scores and, per image, whether its prompt had to be truncated."""
        out = self.scorer.score(list(images), list(prompts))
        scores, truncated = _unpack_clip(out, len(images))
        return np.asarray(scores, dtype=np.float64), truncated


def _unpack_clip(out: Any, n: int) -> tuple[Any, list[bool]]:
    # ClipScoreResult (scores, tokens[i].truncated, n_truncated), or a plain (scores, flags) pair.
    if isinstance(out, tuple) and len(out) == 2:
        scores, trunc = out
    else:
        scores = getattr(out, "scores", out)
        tokens = getattr(out, "tokens", None)
        trunc = [bool(t.truncated) for t in tokens] if tokens else getattr(out, "n_truncated", 0)
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    if isinstance(trunc, (int, np.integer)):
        flags = [False] * n  # only a count: per-image attribution is unknown, the prompt table has it
    else:
        flags = [bool(t) for t in trunc]
    return scores, flags


__all__ = [
    "CLIP_DEFAULT_SPEC",
    "ClipPromptMetric",
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipScoreResult",
    "ClipScorer",
    "TokenInfo",
    "clip_preprocess",
    "resolve_clip_spec",
    "truncate_keep_eos",
]
