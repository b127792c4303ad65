"""CLIP score on a tiny random CLIP with CLIP's real BPE vocab: torchmetrics parity, long prompts keep EOS,
preprocessing parity with transformers' PIL processor, offline missing-weights errors, no torchvision."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from clip_fixtures import build_tiny_clip, photos  # noqa: E402

from evalkit.errors import EvalkitError, MissingWeightsError  # noqa: E402
from evalkit.metrics.clip_score import (  # noqa: E402
    ClipScorer,
    clip_preprocess,
    resolve_clip_spec,
    truncate_keep_eos,
)

SHORT = ["a photo of an astronaut", "a cat lying on a rug", "a cup of coffee", "portrait of a woman",
         "a rocket on a launch pad", "a black and white photo of a cameraman"]
LONG = "baroque style, a lavish oil painting of " + ", ".join(f"ornate gilded detail number {i}" for i in range(60))


@pytest.fixture(scope="module", params=[2, 49407], ids=["legacy-eos2-argmax", "eos49407-first-eos"])
def clip_dir(request, tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp(f"clip{request.param}"), eos_token_id=request.param)


@pytest.fixture(scope="module")
def scorer(clip_dir: Path) -> ClipScorer:
    return ClipScorer(str(clip_dir))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return photos()


class _TensorOutputs(torch.nn.Module):
    """transformers 5 returns ModelOutput from get_*_features, which torchmetrics 1.9 calls .norm() on
    (AttributeError). This shim returns the projected pooled tensor, as transformers 4 did."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_text_features(self, *a, **k):
        return self.model.get_text_features(*a, **k).pooler_output

    def get_image_features(self, *a, **k):
        return self.model.get_image_features(*a, **k).pooler_output


def test_scores_match_torchmetrics_on_short_prompts(scorer: ClipScorer, clip_dir: Path, images) -> None:
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    proc = CLIPProcessor.from_pretrained(str(clip_dir))
    imgs = [torch.from_numpy(i).permute(2, 0, 1) for i in images]
    with torch.inference_mode():
        raw, n = _clip_score_update(imgs, SHORT, _TensorOutputs(model), proc)  # 100 * cos per pair
    # torchmetrics' clip_score = max(mean over the batch, 0); per image that is max(100 cos, 0).
    expected = torch.clamp(raw.double(), min=0).numpy()
    res = scorer.score(images, SHORT)
    assert n == len(SHORT) and res.n_truncated == 0 and all(t.dropped == 0 for t in res.tokens)
    np.testing.assert_allclose(100 * res.cosine, raw.double().numpy(), atol=1e-4)
    np.testing.assert_allclose(res.scores, expected, atol=1e-4)
    assert res.scores.dtype == np.float64 and (res.scores >= 0).all()
    # A random model gives some negative cosines: the clamp is per image.
    assert ((res.cosine < 0) == (res.scores == 0)).all()


def test_score_is_the_formula_on_get_features(scorer: ClipScorer, clip_dir: Path, images) -> None:
    """Independent of torchmetrics: 100 * max(cos, 0) from CLIPModel.get_*_features and the PIL processor."""
    from transformers import CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    px = CLIPImageProcessorPil.from_pretrained(str(clip_dir))(images=images, return_tensors="pt")["pixel_values"]
    tok = scorer.tokenizer(SHORT, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ie = model.get_image_features(pixel_values=px).pooler_output.double()
        te = model.get_text_features(**tok).pooler_output.double()
    cos = torch.nn.functional.cosine_similarity(ie, te).numpy()
    np.testing.assert_allclose(scorer.score(images, SHORT).scores, 100 * np.maximum(cos, 0), atol=1e-4)


def test_long_prompt_truncated_keeping_eos(scorer: ClipScorer) -> None:
    from transformers import CLIPModel

    ids_full = scorer.tokenizer(LONG, truncation=False, verbose=False)["input_ids"]
    assert len(ids_full) > 300
    ids, mask, eos_pos, info = scorer.tokenize([LONG, "a cat"])
    assert ids.shape[1] == scorer.max_tokens == 77
    assert ids[0, -1].item() == scorer.eos_id and eos_pos[0].item() == 76
    assert ids[0, :76].tolist() == ids_full[:76]  # BOS and the first 75 words kept in order
    assert info[0].n_tokens == len(ids_full) and info[0].dropped == len(ids_full) - 77 and info[0].truncated
    assert info[1].dropped == 0 and ids[1, eos_pos[1]].item() == scorer.eos_id and mask[1].sum() == eos_pos[1] + 1

    # Our pooled embedding of the long prompt == transformers' own pooling on the manually truncated ids.
    manual = torch.tensor([ids_full[:76] + [scorer.eos_id]])
    model = CLIPModel.from_pretrained(str(scorer.spec)).eval()
    with torch.inference_mode():
        ref = model.get_text_features(input_ids=manual).pooler_output
    emb, infos = scorer.text_embeddings([LONG, "a cat"])
    torch.testing.assert_close(emb[0:1], ref, atol=1e-5, rtol=1e-5)
    assert infos[0].dropped == len(ids_full) - 77

    # What torchmetrics does (slice to 77 ids) loses EOS and pools elsewhere: a different embedding.
    sliced = torch.tensor([ids_full[:77]])
    assert scorer.eos_id not in sliced[0].tolist()
    with torch.inference_mode():
        wrong = model.get_text_features(input_ids=sliced).pooler_output
    assert not torch.allclose(wrong, ref, atol=1e-4)


def test_300_token_prompt_scores_and_is_counted(scorer: ClipScorer, images) -> None:
    prompts = [LONG, SHORT[1], LONG + " extra"]
    res = scorer.score(images[:3], prompts)
    assert res.n_truncated == 2 and [t.truncated for t in res.tokens] == [True, False, True]
    assert res.tokens[2].dropped > res.tokens[0].dropped > 200
    assert np.isfinite(res.scores).all()
    # Batching does not change a score (padding never reaches the EOS position under CLIP's causal mask).
    alone = scorer.score(images[1:2], prompts[1:2]).scores[0]
    assert alone == pytest.approx(res.scores[1], abs=1e-4)


def test_truncate_keep_eos_unit() -> None:
    assert truncate_keep_eos([1, 5, 9], 77, 9) == ([1, 5, 9], 0)
    assert truncate_keep_eos([1, 5, 6, 7, 9], 4, 9) == ([1, 5, 6, 9], 1)
    assert truncate_keep_eos([1, 5, 6], 3, 9) == ([1, 5, 9], 1)  # missing EOS is added, then truncated
    with pytest.raises(ValueError):
        truncate_keep_eos([1, 9], 1, 9)


def test_preprocess_matches_transformers_pil_processor(images) -> None:
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil()
    for img in images + [images[0][:100, :37]]:  # landscape, portrait, square, gray-as-RGB, tiny/narrow
        ref = proc(images=[img], return_tensors="np")["pixel_values"][0]
        ours = clip_preprocess(img)
        assert ours.shape == ref.shape == (3, 224, 224)
        np.testing.assert_allclose(ours, ref, atol=1e-6)
    gray = clip_preprocess(images[-1][:, :, 0])
    np.testing.assert_allclose(gray, clip_preprocess(images[-1]), atol=0)


def test_missing_hub_weights_fail_fast_offline(tmp_path) -> None:
    code = (
        "import time, sys; t = time.time()\n"
        "from evalkit.errors import MissingWeightsError\n"
        "from evalkit.metrics.clip_score import ClipScorer\n"
        "try:\n    ClipScorer('openai/clip-vit-large-patch14')\nexcept MissingWeightsError as e:\n"
        "    print('MISSING', round(time.time() - t, 2), e)\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    for offline in ("1", None):  # fast with HF_HUB_OFFLINE=1, and also without it (no network call is made)
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)
        if offline:
            env["HF_HUB_OFFLINE"] = offline
        t = time.time()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "MISSING" in r.stdout and "openai/clip-vit-large-patch14" in r.stdout, r.stdout
        assert "hf download" in r.stdout and "--clip-model" in r.stdout
        in_call = float(r.stdout.split()[1])
        assert in_call < 5.0, (offline, in_call, time.time() - t)


def test_bad_local_specs(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="not found"):
        resolve_clip_spec(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="config.json"):
        resolve_clip_spec(str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="checkpoint not found"):
        resolve_clip_spec(f"open_clip:ViT-H-14:{tmp_path / 'none.bin'}")
    with pytest.raises(EvalkitError, match="open_clip:ARCH"):
        resolve_clip_spec("open_clip:ViT-H-14")


def test_open_clip_without_torchvision_is_a_clear_error(tmp_path) -> None:
    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(b"x")
    code = (
        "import sys\nfrom evalkit.errors import EvalkitError\nfrom evalkit.metrics.clip_score import ClipScorer\n"
        f"try:\n    ClipScorer('open_clip:ViT-B-32:{ckpt}')\nexcept EvalkitError as e:\n    print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, timeout=120)
    if probe.returncode == 0:
        pytest.skip("torchvision works here: open_clip would load")
    assert "ERR" in r.stdout and "torchvision" in r.stdout, (r.stdout, r.stderr[-2000:])


def test_no_torchvision_import(clip_dir: Path) -> None:
    code = (
        "import sys, numpy as np\nfrom evalkit.metrics.clip_score import ClipScorer\n"
        f"s = ClipScorer({str(clip_dir)!r})\n"
        "r = s.score([np.zeros((64, 80, 3), np.uint8)], ['a prompt'])\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\nprint('ok', r.scores)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
