"""CLIP score through open_clip (`--clip-model open_clip:...`).

open_clip imports torchvision, which does not exist on the CPU machines here, so the scoring tests run where it
does (the GPU machine: `benchmarks/README.md` says how); on CPU they skip with that reason. The spec checks at the
top need no open_clip and run everywhere.

The reference is open_clip's own API on the same tiny random model (the documented recipe: encode_image /
encode_text, cosine, 100 * max(cos, 0)); the model is built from an open_clip config with CLIP's real BPE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evalkit.errors import EvalkitError, MissingWeightsError
from evalkit.metrics.clip_score import resolve_clip_spec

from conftest import run_evalkit

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
LONG_PROMPT = " ".join(["a very detailed painting of a lighthouse on a cliff at dusk"] * 12)  # ~130 tokens


def test_open_clip_folder_spec(tmp_path: Path) -> None:
    d = tmp_path / "oc"
    d.mkdir()
    with pytest.raises(MissingWeightsError, match="open_clip_config.json"):
        resolve_clip_spec(f"open_clip:{d}")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    # A folder with a config but no weights: open_clip would go on with random weights; evalkit refuses.
    with pytest.raises(MissingWeightsError, match="no weights file"):
        resolve_clip_spec(f"open_clip:{d}")
    (d / "open_clip_model.safetensors").write_bytes(b"x")
    assert resolve_clip_spec(f"open_clip:{d}") == ("open_clip", f"local-dir:{d.resolve()}")
    with pytest.raises(EvalkitError, match="open_clip:/path/to/folder"):
        resolve_clip_spec("open_clip:ViT-B-32")


def _open_clip():
    try:
        import open_clip
    except Exception as e:  # ModuleNotFoundError: torchvision, or torchvision's C ops missing
        pytest.skip(f"open_clip cannot be imported here ({type(e).__name__}: {e}); it needs torchvision, "
                    "which exists on the GPU machine, not on the CPU machines here")
    return open_clip


@pytest.fixture(scope="module")
def oc_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny random open_clip model saved both ways evalkit accepts: a folder and an ARCH + checkpoint file."""
    open_clip = _open_clip()
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("open_clip")
    (root / "cfg").mkdir()
    (root / "cfg" / "evalkit-tiny-oc.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / "cfg")
    torch.manual_seed(0)
    model = open_clip.create_model("evalkit-tiny-oc")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = root / "folder"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    torch.save(sd, root / "tiny.pt")
    return {"folder": folder, "arch": "evalkit-tiny-oc", "ckpt": root / "tiny.pt"}


def _images() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]  # sizes differ: crops differ


PROMPTS = ["an astronaut in a white suit", "a tabby cat", LONG_PROMPT, "a rocket on a launch pad"]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def test_open_clip_folder_matches_open_clip_api(oc_model: dict) -> None:
    open_clip = _open_clip()
    import torch
    from PIL import Image

    from evalkit.metrics.clip_score import ClipScorer

    dev = _device()
    spec = f"open_clip:{oc_model['folder']}"
    res = ClipScorer(spec, device=dev, batch_size=3).score(_images(), PROMPTS)  # batch 3: a partial last batch

    name = f"local-dir:{oc_model['folder']}"
    model, _, pre = open_clip.create_model_and_transforms(name, device=dev)
    tok = open_clip.get_tokenizer(name)
    with torch.no_grad():
        fi = model.eval().encode_image(torch.stack([pre(Image.fromarray(i)) for i in _images()]).to(dev))
        ids = tok(PROMPTS)
        ft = model.encode_text(ids.to(dev))
    cos = torch.nn.functional.cosine_similarity(fi.float(), ft.float()).double().cpu().numpy()
    np.testing.assert_allclose(res.cosine, cos, atol=1e-5)
    np.testing.assert_allclose(res.scores, 100 * np.maximum(cos, 0), atol=1e-3)

    # The long prompt is cut to 77 tokens with <|endoftext|> kept last, and evalkit reports how many it dropped.
    assert int(ids[2, -1]) == tok.eot_token_id
    n_long = len(tok.encode(LONG_PROMPT)) + 2
    assert n_long > 77
    assert res.n_truncated == 1
    assert [t.dropped for t in res.tokens] == [0, 0, n_long - 77, 0]


def test_open_clip_arch_and_checkpoint_equal_folder(oc_model: dict) -> None:
    _open_clip()
    from evalkit.metrics.clip_score import ClipScorer

    dev = _device()
    a = ClipScorer(f"open_clip:{oc_model['folder']}", device=dev).score(_images(), PROMPTS)
    b = ClipScorer(f"open_clip:{oc_model['arch']}:{oc_model['ckpt']}", device=dev).score(_images(), PROMPTS)
    np.testing.assert_allclose(a.cosine, b.cosine, atol=1e-6)
    assert b.model_id.startswith("open_clip:evalkit-tiny-oc:")


def test_open_clip_unknown_arch_is_a_clear_error(oc_model: dict) -> None:
    _open_clip()
    from evalkit.metrics.clip_score import ClipScorer

    with pytest.raises(EvalkitError, match="no-such-arch"):
        ClipScorer(f"open_clip:no-such-arch:{oc_model['ckpt']}")


def test_score_stage_with_open_clip_folder(oc_model: dict, tiny_run: Path, tmp_path: Path) -> None:
    """`evalkit score --clip-model open_clip:FOLDER` on a real run: CLIP score becomes numbers, not 'skipped'."""
    _open_clip()
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = run_evalkit("score", str(run), "--metrics", "clip", "--clip-model", f"open_clip:{oc_model['folder']}")
    assert r.returncode == 0, r.stderr[-3000:]
    gen = [json.loads(f.read_text()) for f in sorted((run / "generation").glob("*.json"))]
    ok = [g["backend"] for g in gen if g.get("status") == "ok"]
    assert "bf16" in ok and len(ok) >= 2
    for b in ok:
        m = json.loads((run / "metrics" / f"{b}.json").read_text())["metrics"]["clip_score"]
        assert m["status"] == "ok" and m["n"] == 3 and np.isfinite(m["mean"]), (b, m)
        assert m["model"] == f"open_clip:{oc_model['folder']}", m
