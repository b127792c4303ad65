"""Weights a user supplies: checkpoints no package on the index ships (PickScore, HPSv2.1, ImageReward, CMMD's
CLIP ViT-L/14@336). Each is named by a weight id, which is also the NAME of ``--metric-weights NAME=PATH``
(``metric_weights={NAME: PATH}`` from Python); metrics declare the ids they read in ``MetricSpec.weights``.

Resolution, never a download:
  1. the PATH given for the id (a file or a folder, as the id's spec says);
  2. else the id's Hugging Face repo in the local cache (``snapshot_download(local_files_only=True)``: a cache
     lookup, no network call);
  3. else MissingWeightsError naming what is missing and how to supply it; the metric is skipped with that reason.

Reproducibility: no SHA-256 is published for any of these files (checked 2026-12: neither the model cards nor the
reference code state one). So every file that decides a number is hashed and its SHA-256 goes into the metric's
record (``weights_sha256``); PINNED_SHA256 holds the hashes evalkit knows, and a file of a pinned name with another
hash is refused. Hashes are kept in evalkit's cache by (path, size, mtime), so a 4 GB checkpoint is read once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from evalkit.errors import EvalkitError, MissingWeightsError

HOW = "pass --metric-weights {id}=PATH to `evalkit score` / `evalkit run` (metric_weights={{'{id}': PATH}} in Python)"


@dataclass(frozen=True)
class UserWeightSpec:
    """One user-supplied checkpoint: what PATH must be, where it comes from, and the local-cache fallback."""

    id: str
    needed_by: str  # the metrics reading it, for messages
    expects: str  # what PATH must be, one phrase
    source: str  # where a user gets it
    hf_repo: str | None = None  # looked up in the local Hugging Face cache when no PATH is given


USER_WEIGHTS: dict[str, UserWeightSpec] = {s.id: s for s in [
    UserWeightSpec("pickscore", "pickscore, pickscore_drop",
                   "a transformers CLIPModel folder (config.json + model.safetensors or pytorch_model.bin)",
                   "https://huggingface.co/yuvalkirstain/PickScore_v1", "yuvalkirstain/PickScore_v1"),
    UserWeightSpec("hps_v21", "hps_v21, hps_v21_drop",
                   "HPS_v2.1_compressed.pt, or a folder holding it",
                   "https://huggingface.co/xswu/HPSv2 (file HPS_v2.1_compressed.pt)", "xswu/HPSv2"),
    UserWeightSpec("imagereward", "imagereward, imagereward_drop",
                   "a folder holding ImageReward.pt, med_config.json and bert-base-uncased's vocab.txt",
                   "https://huggingface.co/THUDM/ImageReward (ImageReward.pt, med_config.json) and "
                   "https://huggingface.co/google-bert/bert-base-uncased (vocab.txt)", "THUDM/ImageReward"),
    UserWeightSpec("cmmd", "cmmd, cmmd_real",
                   "a transformers CLIP ViT-L/14@336 folder (config.json + model.safetensors or pytorch_model.bin)",
                   "https://huggingface.co/openai/clip-vit-large-patch14-336", "openai/clip-vit-large-patch14-336"),
]}

# file name -> published SHA-256, per id. None is published for these files; add one here when it is, and a copy
# with another hash is refused instead of scored.
PINNED_SHA256: dict[str, dict[str, str]] = {wid: {} for wid in USER_WEIGHTS}


def parse_metric_weights(items: list[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["pickscore=/p", ...]`` (CLI) or a mapping (Python) -> {id: path}; an unknown id or a malformed item is a
    one-line EvalkitError listing the known ids."""
    if not items:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(items, Mapping):
        pairs = [(str(k), str(v)) for k, v in items.items()]
    else:
        for item in items:
            name, sep, path = str(item).partition("=")
            if not sep or not name.strip() or not path.strip():
                raise EvalkitError(f"--metric-weights {item!r}: expected NAME=PATH, NAME one of {', '.join(USER_WEIGHTS)}")
            pairs.append((name.strip(), path.strip()))
    out: dict[str, str] = {}
    for name, path in pairs:
        if name not in USER_WEIGHTS:
            from evalkit.errors import suggest

            raise EvalkitError(f"--metric-weights {name}=...: unknown name {name!r}; known: {', '.join(USER_WEIGHTS)}."
                               f"{suggest(name, list(USER_WEIGHTS))}")
        out[name] = path
    return out


def _looks_like_hub_id(text: str) -> bool:
    return not text.startswith(("/", ".", "~")) and text.count("/") == 1 and "\\" not in text


def hf_cached(repo: str) -> Path | None:
    """The snapshot folder of `repo` in the local Hugging Face cache, or None; never a network call."""
    try:
        from huggingface_hub import constants

        # A repo with no folder in the cache is not there: answered without loading the hub's resolver (0.17 s).
        if not (Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}").is_dir():
            return None
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, a bad id, an unreadable cache: not there, for our purposes
        return None


def resolve_user_weights(weight_id: str, metric_weights: Mapping[str, str] | None) -> tuple[Path, str]:
    """(path, where it came from: "given" | "hf:<repo>") of `weight_id`'s checkpoint; MissingWeightsError when
    neither a PATH was given nor the Hugging Face repo is in the local cache, naming what to supply and how."""
    spec = USER_WEIGHTS[weight_id]
    given = (metric_weights or {}).get(weight_id)
    if given:
        p = Path(given).expanduser()
        if p.exists():
            return p, "given"
        if _looks_like_hub_id(given):
            snap = hf_cached(given)
            if snap is not None:
                return snap, f"hf:{given}"
        raise MissingWeightsError(f"{weight_id}: {given} does not exist (from --metric-weights {weight_id}={given}); "
                                  f"it must be {spec.expects}, from {spec.source}")
    snap = hf_cached(spec.hf_repo) if spec.hf_repo else None
    if snap is not None:
        return snap, f"hf:{spec.hf_repo}"
    cache_note = f"; {spec.hf_repo} is not in the local Hugging Face cache either" if spec.hf_repo else ""
    raise MissingWeightsError(f"{spec.needed_by} need {spec.expects} (from {spec.source}): none given{cache_note}. "
                              f"Supply it: {HOW.format(id=weight_id)}. evalkit never downloads weights")


def require_file(folder: Path, name: str, weight_id: str, what: str = "") -> Path:
    """`folder/name`, or MissingWeightsError naming the file that is missing and where it should be."""
    p = folder / name
    if not p.is_file():
        spec = USER_WEIGHTS[weight_id]
        raise MissingWeightsError(f"{weight_id}: {p} is missing{f' ({what})' if what else ''}; --metric-weights "
                                  f"{weight_id}=PATH must be {spec.expects}, from {spec.source}")
    return p


# ---------------------------------------------------------------- hashes

_MEMO: dict[tuple[str, int, int], str] = {}


def _memo_file() -> Path:
    from evalkit.paths import weights_cache_dir

    return weights_cache_dir() / "user-sha256.json"


def user_file_sha256(path: Path) -> str:
    """SHA-256 of a user's weight file, remembered in evalkit's cache by (absolute path, size, mtime_ns): a changed
    file is hashed again, an unchanged 4 GB checkpoint is not read twice."""
    from evalkit.io import atomic_write_json, sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    memo_path, text_key = _memo_file(), json.dumps(list(key))
    try:
        stored = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    except (OSError, ValueError):
        stored = {}
    sha = stored.get(text_key) if isinstance(stored, dict) else None
    if not isinstance(sha, str):
        sha = sha256_file(path)
        stored = stored if isinstance(stored, dict) else {}
        stored[text_key] = sha
        try:
            atomic_write_json(memo_path, stored)
        except OSError:
            pass  # a read-only cache only costs the hash again next process
    _MEMO[key] = sha
    return sha


def hash_weight_files(weight_id: str, files: list[Path]) -> dict[str, str]:
    """{file name: sha256} of the files that decide `weight_id`'s numbers; a file whose name has a pinned hash and
    does not match it is refused (MissingWeightsError naming the file and both hashes)."""
    out: dict[str, str] = {}
    pins = PINNED_SHA256.get(weight_id, {})
    for f in files:
        sha = user_file_sha256(f)
        want = pins.get(f.name)
        if want is not None and sha != want:
            raise MissingWeightsError(f"{weight_id}: {f} has sha256 {sha}, but the published {f.name} has {want} "
                                      f"(corrupt, or another version): refusing to score with it")
        out[f.name] = sha
    return out


def pinned_status(weight_id: str, hashes: Mapping[str, str]) -> str:
    """What the record says about the hashes: verified against a pin, or only recorded."""
    pins = PINNED_SHA256.get(weight_id, {})
    if pins and all(name in pins for name in hashes):
        return "verified against pinned SHA-256s"
    return "recorded, not verified: no SHA-256 is published for these files"


def status_rows() -> list[dict[str, object]]:
    """`evalkit weights` rows for the user-supplied checkpoints (nothing to fetch; they are found when scoring)."""
    return [{"id": s.id, "status": "user-supplied", "path": None, "source": None, "sha256_ok": None, "sha256": None,
             "package": None, "needed_by": [], "description": f"{s.needed_by}: {s.expects}",
             "fix": f"not fetchable by evalkit: get it from {s.source}, then {HOW.format(id=s.id)}"
                    + (f", or put {s.hf_repo} in the local Hugging Face cache" if s.hf_repo else "")}
            for s in USER_WEIGHTS.values()]


__all__ = ["PINNED_SHA256", "USER_WEIGHTS", "UserWeightSpec", "hash_weight_files", "parse_metric_weights",
           "pinned_status", "require_file", "resolve_user_weights", "status_rows", "user_file_sha256"]
