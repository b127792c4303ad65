"""What the score stage reads from a run before it scores anything: the generation records, the backends that can
be scored (and why the others cannot), every image with its reference and content hash (the cache keys). Rank 0
of a distributed score reads this once and broadcasts it (evalkit.score.distributed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.records import read_manifest
from evalkit.score.common import Item, hash_files, skipped
from evalkit.rundir import RunDir, ensure_writable_dir, load_generation_records

RANDOM_WEIGHTS_REASON = "random weights: images carry no quality information"


@dataclass
class Prepared:
    """What rank 0 reads from the run before any scoring (broadcast to the other ranks)."""
    ref: str
    ok: list[str]
    results: dict[str, dict[str, Any]]  # the backends that are not scored, with why
    items: dict[str, list[Item]]
    random_weights: bool


def prepare(rd: RunDir, names: list[str], real_dir: str | os.PathLike[str] | None, verify: bool) -> Prepared:
    """The run's scoring inputs; raises naming any missing, replaced or extra image (nothing is scored then)."""
    manifest = read_manifest(rd.manifest)
    if real_dir and not Path(real_dir).is_dir():
        raise EvalkitError(f"--real-dir {real_dir}: not a folder")
    ensure_writable_dir(rd.metrics_dir)
    backends: list[str] = list(manifest.get("backends", []))
    ref = manifest.get("reference_backend", "bf16")
    results: dict[str, dict[str, Any]] = {}
    if (manifest.get("model") or {}).get("random_weights"):
        for b in backends:
            results[b] = {n: skipped(RANDOM_WEIGHTS_REASON) for n in names}
        return Prepared(ref, [], results, {}, True)
    gens = load_generation_records(rd, backends)
    prompts = {p["id"]: p for p in manifest.get("prompts", [])}
    ok = [b for b in backends if gens.get(b) and gens[b].get("status") == "ok"]
    for b in backends:
        if b not in ok:
            g = gens.get(b)
            why = f"generation {g.get('status')}: {g.get('reason') or 'no reason recorded'}" if g else "not generated yet"
            results[b] = {n: skipped(why) for n in names}
    verify_images(rd, gens, ok, verify)
    return Prepared(ref, ok, results, collect_items(rd, gens, ok, ref, prompts), False)


def verify_images(rd: RunDir, gens: dict[str, Any], ok: list[str], verify: bool) -> None:
    """Refuse, before anything is scored, an image that is not the file its generation record describes: missing,
    truncated or undecodable, replaced (sha256), of the wrong size, or an extra file in images/<backend>/
    (evalkit.integrity). Files whose stat fingerprint matches the record are not re-hashed unless `verify`."""
    from evalkit.integrity import verify_run

    verify_run(rd, {b: gens[b] for b in ok}, full=verify).raise_if_problems()


def collect_items(rd: RunDir, gens: dict[str, Any], ok: list[str], ref: str,
                   prompts: dict[str, Any]) -> dict[str, list[Item]]:
    """Items per ok backend, with reference paths; raises naming every missing file."""
    ref_index: dict[tuple[str, int], Path] = {}
    if ref in ok:
        for e in gens[ref].get("images", []):
            ref_index[(e["prompt_id"], int(e["seed"]))] = rd.root / e["path"]
    items: dict[str, list[Item]] = {}
    missing_ref: list[str] = []
    missing_img: list[str] = []
    for b in ok:
        out = []
        for e in gens[b].get("images", []):
            key = (e["prompt_id"], int(e["seed"]))
            it = Item(prompt_id=key[0], seed=key[1], prompt=(prompts.get(key[0]) or {}).get("text", ""),
                      path=rd.root / e["path"])
            if not it.path.is_file():
                missing_img.append(rd.relative(it.path))
            if b != ref and ref in ok:
                rp = ref_index.get(key, rd.image_path(ref, *key))
                if not rp.is_file():
                    missing_ref.append(rd.relative(rp))
                it.ref_path = rp
            out.append(it)
        items[b] = out
    if missing_ref:
        uniq = sorted(set(missing_ref))
        raise EvalkitError(f"{len(uniq)} reference image(s) missing: {', '.join(uniq[:5])}"
                           f"{' …' if len(uniq) > 5 else ''}; regenerate the reference with `evalkit generate` "
                           f"(it resumes) or remove the run's {ref} images from the comparison")
    if missing_img:
        raise EvalkitError(f"{len(missing_img)} image(s) listed in generation records are missing: "
                           f"{', '.join(missing_img[:5])}{' …' if len(missing_img) > 5 else ''}")
    hash_items(items)
    return items


def hash_items(items: dict[str, list[Item]]) -> None:
    """Content hashes of every image and reference (the cache keys)."""
    allp = sorted({it.path for v in items.values() for it in v} | {it.ref_path for v in items.values() for it in v if it.ref_path})
    hashes = hash_files(allp)
    for v in items.values():
        for it in v:
            it.sha = hashes[it.path] or ""
            if it.ref_path is not None:
                it.ref_sha = hashes[it.ref_path] or ""
