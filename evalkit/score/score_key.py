"""The score stage's rerun key (issue #16.4): a content key of everything a score depends on, stored as
metrics/inputs.json; an unchanged rerun compares it, checks the images by stat fingerprint and returns the stored
results without importing torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalkit.tripwires import TRIPWIRES_VERSION

from evalkit.metrics import registry as reg
from evalkit.rundir import RunDir, load_generation_records

SCORE_INPUTS_FILE = "inputs.json"


def score_inputs_key(rd: RunDir, options: dict[str, Any]) -> str:
    """Content key of everything a score depends on (evalkit.inputs_key): each backend's generation outcome and
    image hashes, the prompts, the options, METRICS_VERSION, evalkit's and the scoring packages' versions, and a
    stat fingerprint of the places weights come from. Progress and worker count change no number: left out."""
    from evalkit.version import __version__
    from evalkit.inputs_key import content_key, hf_hub_cache, package_versions, score_packages, tree_fingerprint
    from evalkit.weights.store import user_weights_dir, weights_cache_dir
    from evalkit.records import read_manifest

    manifest = read_manifest(rd.manifest)
    backends = list(manifest.get("backends", []))
    gens = load_generation_records(rd, backends)
    generation = {b: None if not g else {"status": g.get("status"), "reason": g.get("reason"),
                                         "images": [(i.get("prompt_id"), i.get("path"), i.get("sha256"))
                                                    for i in g.get("images", []) if isinstance(i, dict)]}
                  for b, g in gens.items()}
    clip = options.get("clip_model")
    hub = hf_hub_cache()
    return content_key({
        "evalkit": __version__, "metrics_version": reg.METRICS_VERSION, "options": options,
        "tripwires_version": TRIPWIRES_VERSION,
        "prompts": manifest.get("prompts"), "reference": manifest.get("reference_backend"),
        "model": manifest.get("model"), "generation": generation, "packages": package_versions(score_packages()),
        "weights": [tree_fingerprint(weights_cache_dir()), tree_fingerprint(user_weights_dir(options.get("weights_dir"))),
                    sorted((p.name, p.stat().st_mtime_ns) for p in hub.iterdir()) if hub.is_dir() else [],
                    tree_fingerprint(Path(clip).expanduser()) if clip and Path(clip).expanduser().is_dir() else clip,
                    # --metric-weights: a checkpoint replaced in place must not return the old numbers
                    [(k, _fingerprint(Path(v).expanduser())) for k, v in sorted((options.get("metric_weights") or {}).items())]],
        "real_dir": tree_fingerprint(Path(options["real_dir"])) if options.get("real_dir") else None,
    })


def _fingerprint(p: Path) -> Any:
    """A file's (size, mtime_ns), a folder's tree_fingerprint, or the text given when nothing is there."""
    from evalkit.inputs_key import tree_fingerprint

    if p.is_dir():
        return tree_fingerprint(p)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    return str(p)


def unchanged_results(rd: RunDir, key: str, verify: bool) -> dict[str, Any] | None:
    """The stored results, when the last score read exactly these inputs and every image is still the file its
    record describes (stat fingerprint; full hashes with `verify`); None when there is work to do."""
    from evalkit.inputs_key import stored_key_matches
    from evalkit.records import read_manifest, read_metric_record

    manifest = read_manifest(rd.manifest)
    backends = list(manifest.get("backends", []))
    outputs = [rd.metrics_record(b) for b in backends] + [rd.metrics_dir / "per_image.csv", rd.summary]
    if not stored_key_matches(rd.metrics_dir / SCORE_INPUTS_FILE, key, outputs):
        return None
    gens = load_generation_records(rd, backends)
    from evalkit.score.run_inputs import verify_images

    verify_images(rd, gens, [b for b in backends if gens.get(b) and gens[b].get("status") == "ok"], verify)
    return {b: read_metric_record(rd.metrics_record(b)).get("metrics", {}) for b in backends}
