"""`evalkit models`: every model family and variant, what each form needs, and whether it can run here."""

from __future__ import annotations

import argparse
from typing import Any


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def model_rows() -> list[dict[str, Any]]:
    """One row per family with its variants and forms; what each form needs and whether it is here."""
    from evalkit.families.registry import families, random_path, tiny_path

    rows = []
    for fam in families():
        variants = []
        for v in fam.variants:
            variants.append({
                "name": v.name, "aliases": list(v.aliases), "hub_id": v.hub_id,
                "defaults": {k: getattr(v.defaults, k) for k in v.defaults.__dataclass_fields__},
                "published_params": dict(v.published_params), "source": v.source,
                "forms": {
                    "random": {"spec": f"random:{v.name}", "needs": "a CUDA GPU to build once (then cached)",
                               "built_here": (random_path(fam, v) / ".evalkit-complete").exists()},
                    "real": {"spec": v.hub_id, "needs": "the weights in the local Hugging Face cache or a local "
                                                        "diffusers directory (evalkit never downloads)",
                             "in_hf_cache": _in_hf_cache(v.hub_id)},
                },
            })
        rows.append({
            "family": fam.key, "display": fam.display, "pipeline_class": fam.pipeline_class,
            "components": [{"name": c.name, "role": c.role, "quantized_by_default": c.quantized, "note": c.note}
                           for c in fam.components],
            "tiny": {"spec": f"tiny:{fam.key}", "needs": "nothing (built on the CPU in seconds)",
                     "built_here": (tiny_path(fam) / ".evalkit-complete").exists()},
            "gguf_component": fam.gguf.component if fam.gguf else None, "tokenizer_note": fam.tokenizer_note,
            "variants": variants,
        })
    return rows


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return any(r.repo_id == repo_id for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache at all, or an unreadable one: not here
        return False


def models_main(args: argparse.Namespace) -> int:
    import json
    import sys

    rows = model_rows()
    if args.json:
        print(json.dumps({"families": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="evalkit models (--model tiny:FAMILY | random:VARIANT | HUB_ID | DIR)")
    for col in ("family", "variant", "hub id (real weights)", "defaults", "here"):
        t.add_column(col, overflow="fold")
    for r in rows:
        for i, v in enumerate(r["variants"]):
            d = v["defaults"]
            here = ", ".join(k for k, ok in (("tiny built", r["tiny"]["built_here"] and i == 0),
                                             ("random built", v["forms"]["random"]["built_here"]),
                                             ("real in HF cache", v["forms"]["real"]["in_hf_cache"])) if ok) or "-"
            t.add_row(f"{r['display']} (tiny:{r['family']})" if i == 0 else "", v["name"], v["hub_id"],
                      f"{d['height']}x{d['width']}, {d['num_inference_steps']} steps, guidance {d['guidance_scale']}",
                      here)
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    return 0
