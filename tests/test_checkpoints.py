"""Prequantized checkpoints as backends: `--backend NAME=PATH_OR_HUB_ID` (#26 item 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_evalkit
from evalkit.errors import EvalkitError
from evalkit.families.registry import get_family
from evalkit.io import read_json
from evalkit.quantizers import checkpoint
from evalkit.quantizers.base import BuildContext
from evalkit.quantizers.registry import BACKENDS, LIBRARIES, availability, parse_backend


@pytest.fixture()
def clean_registry():
    """Checkpoint backends registered by a test are gone after it."""
    yield
    checkpoint.forget_checkpoints()
    assert not [n for n, b in BACKENDS.items() if b.library.key == checkpoint.LIBRARY.key]


def test_a_folder_evalkit_wrote_runs_as_a_backend_with_what_the_checkpoint_says(study: Path,
                                                                                torchao_checkpoint: Path) -> None:
    rec = read_json(study / "generation" / "mine.json")
    assert rec["status"] == "ok", rec["reason"]
    assert rec["recipe"]["library"] == "prequantized"
    opts = rec["recipe"]["options"]
    assert opts["path"] == str(torchao_checkpoint) and opts["library"] == "torchao" and opts["layout"] == "folder"
    q = rec["quantization"]
    assert q["library"] == "torchao" and q["library_version"]  # the library the checkpoint names, read from it
    settings = q["resolved_config"]["transformer"]["config"]
    assert settings["quant_method"] == "torchao" and "Int8WeightOnlyConfig" in json.dumps(settings)
    # The census proves it: every linear of the transformer holds torchao's int8 tensor, the T5 stays bf16.
    assert q["layer_types"]["transformer"] == {"Linear[Int8Tensor:bfloat16]": q["linear_count"]["transformer"]}
    assert q["quantized_linear_count"]["text_encoder_2"] == 0 and q["components_quantized"] == ["transformer"]
    # Its identity: path and content key.
    ident = read_json(study / "manifest.json")["config"]["identity"]["checkpoints"]
    assert ident == [["mine", str(torchao_checkpoint), checkpoint.content_key(torchao_checkpoint)]]
    # Scored, and shown in the report like any other backend.
    assert read_json(study / "metrics" / "mine.json")["metrics"]["lpips_alex"]["status"] == "ok"
    assert ">mine<" in (study / "index.html").read_text(encoding="utf-8").replace(" ", "")


def test_an_unchanged_rerun_with_a_checkpoint_does_nothing(study: Path, torchao_checkpoint: Path,
                                                           rtn6_site: Path) -> None:
    from quant_fixtures import STUDY_BACKENDS, plugin_env

    r = run_evalkit("generate", str(study.parent / "study.txt"), "--model", "tiny", "--height", "32", "--width", "32",
                    "--warmup", "0", "--backends", ",".join(STUDY_BACKENDS), "--backend", f"mine={torchao_checkpoint}",
                    "--config", str(study.parent / "options.toml"), "--out", str(study), env=plugin_env(rtn6_site))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing to do" in r.stderr


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(tmp_path: Path, torchao_checkpoint: Path,
                                                                     tiny_model_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(torchao_checkpoint, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_layers"] = 2
    (other / "config.json").write_text(json.dumps(cfg))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\n")
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--backends", "bf16", "--backend", f"x={other}",
                    "--out", str(tmp_path / "run"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "num_layers: checkpoint 2, model 1" in lines[0] and "another architecture" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg, message", [
    ("bf16={ckpt}", "'bf16' is already a backend"),
    ("torchao-fp8dq-row={ckpt}", "is already a backend"),
    ("x={prompts}", "no evalkit library reads this file"),
    ("x={tmp}/nothing", "no such file or folder"),
    ("nobody/no-such-checkpoint", "expected NAME=PATH_OR_HUB_ID"),
    ("x=nobody/no-such-checkpoint", "not in the Hugging Face cache"),
])
def test_what_is_not_a_usable_checkpoint_is_one_line(tmp_path: Path, torchao_checkpoint: Path, arg: str,
                                                     message: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\n")
    value = arg.format(ckpt=torchao_checkpoint, prompts=prompts, tmp=tmp_path)
    r = run_evalkit("generate", str(prompts), "--model", "tiny", "--backend", value, "--out", str(tmp_path / "run"),
                    env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert message in r.stderr


def test_a_hub_id_is_read_from_the_hf_cache_only(tmp_path: Path, torchao_checkpoint: Path) -> None:
    hub = tmp_path / "hub"
    snap = hub / "models--someone--tiny-int8" / "snapshots" / ("0" * 40)
    shutil.copytree(torchao_checkpoint, snap)
    (hub / "models--someone--tiny-int8" / "refs").mkdir()
    (hub / "models--someone--tiny-int8" / "refs" / "main").write_text("0" * 40)
    code = ("import json; from evalkit.quantizers.checkpoint import read_checkpoint; "
            "e = read_checkpoint('x', 'someone/tiny-int8'); print(json.dumps([e['path'], e['library'], e['layout']]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [str(snap.resolve()), "torchao", "folder"]


def test_a_file_of_a_hub_repo_keeps_its_name_through_the_caches_links(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    repo = tmp_path / "hub" / "models--someone--bfl"
    (repo / "blobs").mkdir(parents=True)
    save_file({"transformer_blocks.0.ff.net.2.weight": torch.zeros(8, 16, dtype=torch.float8_e4m3fn),
               "transformer_blocks.0.ff.net.2.weight_scale": torch.ones(8)}, str(repo / "blobs" / "abc123"))
    snap = repo / "snapshots" / ("1" * 40)
    snap.mkdir(parents=True)
    (snap / "small-fp8r.safetensors").symlink_to("../../blobs/abc123")  # how the HF cache stores a file
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    code = ("import json; from evalkit.quantizers.checkpoint import read_checkpoint; "
            "e = read_checkpoint('x', 'someone/bfl/small-fp8r.safetensors'); print(json.dumps([e['library'], "
            "e['layout'], e['components']['']['scheme']]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == ["bfl", "file", "fp8r"]


def test_a_pipeline_folder_loads_its_quantized_components(tmp_path: Path, torchao_checkpoint: Path,
                                                          tiny_model_path: Path, clean_registry: None) -> None:
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    for item in tiny_model_path.iterdir():
        if item.name != "transformer" and not item.name.startswith("."):
            (pipe / item.name).symlink_to(item)
    shutil.copytree(torchao_checkpoint, pipe / "transformer")
    entry = checkpoint.fit_to_model(checkpoint.read_checkpoint("pipe", str(pipe)), str(tiny_model_path),
                                    get_family("flux1"))
    assert entry["layout"] == "pipeline" and list(entry["components"]) == ["transformer"]
    assert entry["roles"] == ["denoiser"] and entry["library"] == "torchao"
    checkpoint.register_checkpoints([entry])
    spec = parse_backend("pipe")
    assert spec.backend.roles == ("denoiser",) and spec.backend.layer_marker == "Tensor"
    assert availability(spec, "cpu", None) == ("ok", None)


def test_a_single_file_of_another_size_is_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    f = tmp_path / "small-fp8r.safetensors"
    save_file({"transformer_blocks.0.ff.net.2.weight": torch.zeros(8, 16, dtype=torch.float8_e4m3fn),
               "transformer_blocks.0.ff.net.2.weight_scale": torch.ones(8)}, str(f))
    entry = checkpoint.read_checkpoint("small", str(f))
    assert entry["library"] == "bfl" and entry["components"][""]["scheme"] == "fp8r"
    with pytest.raises(EvalkitError, match="holds 128 weights, the run's transformer has"):
        checkpoint.fit_to_model(entry, str(tiny_model_path), get_family("flux1"))


def test_a_gguf_file_is_read_by_the_gguf_library(tmp_path: Path, tiny_model_path: Path) -> None:
    from evalkit.quantizers.gguf import convert

    f = convert.ensure_gguf(str(tiny_model_path), "Q8_0", tmp_path, "transformer", "flux")
    entry = checkpoint.fit_to_model(checkpoint.read_checkpoint("g", str(f)), str(tiny_model_path), get_family("flux1"))
    assert entry["library"] == "gguf" and entry["components"]["transformer"]["scheme"] == "Q8_0"
    assert entry["components"]["transformer"]["params"] == checkpoint.component_params(tiny_model_path, "transformer")


def test_a_checkpoint_changed_after_the_run_recorded_it_is_refused_by_the_worker(tmp_path: Path,
                                                                                  torchao_checkpoint: Path,
                                                                                  tiny_model_path: Path,
                                                                                  clean_registry: None) -> None:
    entry = checkpoint.fit_to_model(checkpoint.read_checkpoint("c", str(torchao_checkpoint)), str(tiny_model_path),
                                    get_family("flux1"))
    checkpoint.register_checkpoints([{**entry, "content_key": "0" * 20}])  # what a run recorded before a change
    backend = BACKENDS["c"]
    family = get_family("flux1")
    ctx = BuildContext(device="cpu", capability=None, model_path=str(tiny_model_path), options=backend.options,
                       cache_dir=str(tmp_path), family="flux1")
    with pytest.raises(EvalkitError, match="changed since this run recorded it"):
        checkpoint.QUANTIZER.load_component(backend, family.denoiser, ctx, family, {"resolved_config": {}})


def test_content_keys_see_a_changed_byte_and_ignore_evalkits_markers(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.bin").write_bytes(bytes(1000))
    key = checkpoint.content_key(d)
    (d / ".evalkit-complete").write_text("now")
    assert checkpoint.content_key(d) == key
    (d / "w.bin").write_bytes(bytes(999) + b"\x01")
    assert checkpoint.content_key(d) != key


def test_a_checkpoint_backend_is_forgotten(clean_registry: None, torchao_checkpoint: Path) -> None:
    checkpoint.register_checkpoints([{**checkpoint.read_checkpoint("tmp-ckpt", str(torchao_checkpoint)),
                                      "roles": ["denoiser"]}])
    assert "tmp-ckpt" in BACKENDS and BACKENDS["tmp-ckpt"].library is checkpoint.LIBRARY
    checkpoint.forget_checkpoints()
    assert "tmp-ckpt" not in BACKENDS and checkpoint.LIBRARY.key in LIBRARIES
