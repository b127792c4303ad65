"""The run's tokenizers are loaded once for every backend's process, outside the load clock
(evalkit/generate/worker/tokenizers.py), and they are the objects `from_pretrained` would have built."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from evalkit.generate.worker.tokenizers import PRELOAD_ENV, load_tokenizers, tokenizer_classes

NAMES = ("tokenizer", "tokenizer_2")  # the tiny FLUX.1's (evalkit.families.flux1: CLIP and T5)
PROMPTS = ["a red fox in the snow, watercolour", "", "x " * 200]


def test_the_declared_transformers_tokenizers_are_picked(tiny_model_path: Path, tmp_path: Path) -> None:
    assert tokenizer_classes(tiny_model_path, NAMES) == {"tokenizer": "CLIPTokenizer", "tokenizer_2": "T5Tokenizer"}
    # A processor (FLUX.2-dev's PixtralProcessor) and a component the directory lacks are left to from_pretrained.
    copy = tmp_path / "pipe"
    shutil.copytree(tiny_model_path / "tokenizer", copy / "tokenizer")
    index = json.loads((tiny_model_path / "model_index.json").read_text(encoding="utf-8"))
    index["tokenizer"] = ["transformers", "PixtralProcessor"]
    (copy / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    assert tokenizer_classes(copy, NAMES) == {}


def test_loaded_once_and_the_same_as_what_from_pretrained_builds(tiny_model_path: Path) -> None:
    import torch
    from diffusers import FluxPipeline

    first = load_tokenizers(tiny_model_path, NAMES)
    assert set(first) == set(NAMES)
    assert all(load_tokenizers(str(tiny_model_path), NAMES)[n] is first[n] for n in NAMES)  # once per process
    pipe = FluxPipeline.from_pretrained(tiny_model_path, dtype=torch.bfloat16)
    for name in NAMES:
        ours, theirs = first[name], getattr(pipe, name)
        assert type(ours) is type(theirs)
        for kwargs in ({}, {"padding": "max_length", "max_length": 77, "truncation": True}):
            assert ours(PROMPTS, **kwargs)["input_ids"] == theirs(PROMPTS, **kwargs)["input_ids"], (name, kwargs)


def test_the_forkserver_loads_them_before_it_forks_a_worker(tiny_model_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import evalkit.generate.spawn as spawn
    import forkserver_probe
    from evalkit.generate.worker.run import preload_modules

    assert "evalkit.generate.worker.preload_tokenizers" in preload_modules(False, "flux1")
    assert "evalkit.generate.worker.preload_tokenizers" not in preload_modules(True, "flux1")  # needs transformers
    # the forkserver is a fresh interpreter: this is how it finds tests/forkserver_probe.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    spawn.stop_forkserver()
    try:
        spawn.start_forkserver("flux1", (str(tiny_model_path), NAMES))
        assert PRELOAD_ENV not in os.environ  # the request lived only while the server started
        ctx = spawn._forkserver()
        queue = ctx.SimpleQueue()
        child = ctx.Process(target=forkserver_probe.loaded_tokenizers, args=(queue,))
        child.start()
        child.join(120)
        assert child.exitcode == 0
        assert queue.get() == sorted(NAMES)
    finally:
        spawn.stop_forkserver()
