"""Score-time tripwires (evalkit.tripwires): which images of a backend are broken, so that no mean averages them.

Each image's tripwire results are cached by content (table `tripwire-v<N>`, keyed like a pair: reference sha and
image sha), computed where the scoring pipeline has the pixels decoded anyway (`compute_for`, from
evalkit.score.stage), and for the images it did not decode (their metrics were cached) by `fill_missing`. A rerun
on an unchanged run decodes nothing for them either.

`broken_for_backend` then joins what generate found on the tensors (the image entries' `broken`), what score found
on the PNGs, and the two backend-level tripwires (the census finds no quantized layer; every image byte-identical
to the reference's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from evalkit import tripwires
from evalkit.score.common import Item

if TYPE_CHECKING:
    from evalkit.score.state import State

TABLE = f"tripwire-v{tripwires.TRIPWIRES_VERSION}"


def compute_for(state: "State", b: str, i: int, img: Any, ref: Any | None) -> None:
    """Cache item i's tripwire results (never raises: a failing tripwire is recorded as not evaluated)."""
    it = state.items[b][i]
    table = state.cache.table(TABLE)
    is_ref = b == state.ref
    if not is_ref and ref is not None and it.ref_sha and f":{it.ref_sha}" not in table:
        # the reference image's own tests (its key as the reference backend's item): it is decoded here anyway
        state.cache.put(TABLE, f":{it.ref_sha}", tripwires.image_tests(ref, None))
    if it.pair_key in table:
        return
    if not is_ref and ref is None and it.ref_path is not None:
        return  # its reference is not decoded here; fill_missing does it
    # An image with no partner (set metrics only, or its reference image missing) gets the tests of one image.
    state.cache.put(TABLE, it.pair_key, tripwires.image_tests(img, None if is_ref else ref))


def fill_missing(state: "State", backends: Sequence[str]) -> None:
    """Compute the tripwires of every image whose results are not cached yet (decoding it and its reference)."""
    table = state.cache.table(TABLE)
    corrupt = state.cache.table("corrupt")
    for b in backends:
        items = state.items.get(b) or []
        todo = [i for i, it in enumerate(items) if it.pair_key not in table and it.sha not in corrupt
                and (b == state.ref or it.ref_path is None or it.ref_sha not in corrupt)]
        for s in range(0, len(todo), 16):
            part = todo[s:s + 16]
            paths = [items[i].path for i in part] + [items[i].ref_path for i in part
                                                     if b != state.ref and items[i].ref_path is not None]
            decoded = {Path(d.path): d.array for d in state.decoder.decode(list(dict.fromkeys(paths)))}
            for i in part:
                img = decoded.get(Path(items[i].path))
                paired = b != state.ref and items[i].ref_path is not None
                ref = decoded.get(Path(items[i].ref_path)) if paired else None
                if img is None or (paired and ref is None):
                    continue  # undecodable: the corrupt-image path reports it
                compute_for(state, b, i, img, ref)


def _score_entry(it: Item, results: Sequence[Mapping[str, Any]], file: str) -> dict[str, Any] | None:
    return tripwires.entry_from(results, prompt_id=it.prompt_id, seed=it.seed, file=file, when="score")


def broken_for_backend(state: "State", b: str, gen: Mapping[str, Any] | None, ref_gen: Mapping[str, Any] | None,
                       file_of: Any = None, backend_tests: bool = True
                       ) -> tuple[list[dict[str, Any]], dict[int, str], dict[int, str], list[str]]:
    """(broken entries, {item index: reason} of b's broken images, {item index: reason} of pairs whose reference
    image is broken, not-evaluated notes) for backend b.

    `file_of(item)`: how an entry names the file (run-relative path by default)."""
    items = state.items.get(b) or []
    table = state.cache.table(TABLE)
    file_of = file_of or (lambda it: it.path.name)
    gen_entries: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in (gen or {}).get("images") or []:
        if e.get("broken"):
            gen_entries[(e.get("prompt_id"), int(e.get("seed", 0)))] = list(e["broken"])
    entries: list[dict[str, Any]] = []
    by_index: dict[int, str] = {}
    notes: list[str] = []
    for i, it in enumerate(items):
        res = table.get(it.pair_key) or []
        se = _score_entry(it, res, file_of(it))
        got = tripwires.merge_entries(gen_entries.get((it.prompt_id, it.seed), []), [se] if se else [])
        if not got:  # a broken image's other tests say nothing more
            notes += [f"{file_of(it)}: {r['tripwire']} not evaluated: {r['not_evaluated']}"
                      for r in res if r.get("not_evaluated")]
        for e in got:
            e["file"] = file_of(it)
            entries.append(e)
            by_index[i] = f"broken image ({e['tripwire']}): {tripwires.all_reasons(e)}"
    backend_level: list[dict[str, Any]] = []
    # Backend-level tests need the record to say what the backend is (generate writes `recipe`; without it, e.g.
    # a hand-made record, identical images may be a reference-based variant: not evaluated).
    backend_tests = backend_tests and bool(((gen or {}).get("recipe") or {}).get("library"))
    if gen is not None and backend_tests:
        nq = tripwires.not_quantized(gen, b == state.ref, state.ref)
        if nq:
            backend_level.append(nq)
    if backend_tests and b != state.ref and state.ref in state.items \
            and not (gen is not None and tripwires.reference_based(gen, state.ref)):
        ref_shas = {(it.prompt_id, it.seed): it.sha for it in state.items[state.ref]}
        mine = {f"{it.prompt_id}:{it.seed}": it.sha for it in items}
        theirs = {f"{p}:{s}": sha for (p, s), sha in ref_shas.items()}
        same = tripwires.identical_to_reference(mine, theirs)
        if same:
            backend_level.append(same)
    if backend_level:
        why = "; ".join(e["reason"] for e in backend_level)
        for i in range(len(items)):
            by_index.setdefault(i, f"broken backend ({backend_level[0]['tripwire']}): {why}")
    ref_broken: dict[int, str] = {}
    if b != state.ref and state.ref in state.items:
        _e, ref_idx, _r, _n = broken_for_backend(state, state.ref, ref_gen, None, file_of, False)
        ref_items = state.items[state.ref]
        bad_ref = {(ref_items[j].prompt_id, ref_items[j].seed): why for j, why in ref_idx.items()}
        for i, it in enumerate(items):
            if (it.prompt_id, it.seed) in bad_ref and i not in by_index:
                ref_broken[i] = f"its reference image is broken: {bad_ref[(it.prompt_id, it.seed)]}"
    return backend_level + entries, by_index, ref_broken, notes
