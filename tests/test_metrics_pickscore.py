"""PickScore on a tiny random CLIP laid out like yuvalkirstain/PickScore_v1: parity with the README's own inference
code, and pickscore / pickscore_drop in a scored run (records carry the weights' SHA-256).

Tolerance (stated where asserted): 1e-4 in score units (~100·cos); measured ~8e-6."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from preference_fixtures import build_tiny_pickscore, photos
from evalkit.metrics.pickscore import PickScoreMetric

PROMPTS = ["a photo of an astronaut", "a cat lying on a rug", "a cup of coffee", "a rocket on a launch pad",
           "baroque style, a lavish oil painting of " + ", ".join(f"ornate gilded detail number {i}" for i in range(40))]


def readme_scores(model_dir, proc_dir, images, prompts) -> np.ndarray:
    """yuvalkirstain/PickScore README.md L58-90, verbatim but for one change: transformers 5 returns a ModelOutput
    from get_*_features, so `.pooler_output` (the projected embedding transformers 4 returned)."""
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(proc_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    for img, prompt in zip(images, prompts):
        image_inputs = processor(images=[Image.fromarray(img)], padding=True, truncation=True, max_length=77,
                                 return_tensors="pt")
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs).pooler_output
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        out.append(float(scores[0]))
    return np.asarray(out)


@pytest.mark.parametrize("eos", [2, 49407], ids=["legacy-eos2-argmax", "eos49407"])
def test_matches_the_readme_inference_code(tmp_path, eos):
    mdir = build_tiny_pickscore(tmp_path / "PickScore_v1", tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K", eos)
    imgs = photos()
    metric = PickScoreMetric(metric_weights={"pickscore": str(mdir)})
    ours, flags = metric.score(imgs, PROMPTS)
    ref = readme_scores(mdir, tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K", imgs, PROMPTS)
    assert np.ptp(ref) > 0.5  # the tiny model separates the pairs: not a comparison of constants
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)  # tolerance 1e-4 score units
    assert flags == [False] * 4 + [True]  # the 40-detail prompt is over 77 tokens


def test_pickscore_and_its_drop_in_a_scored_run(tmp_path):
    from metrics_fixtures import make_run, noise

    from evalkit.score.stage import score_run

    mdir = build_tiny_pickscore(tmp_path / "PickScore_v1")
    run = make_run(tmp_path / "run", {"bf16": None, "q": lambda a, i: noise(a, 30, seed=i)}, n_prompts=3, size=64)
    res = score_run(run, "pickscore,pickscore_drop", workers=1, progress=False, device="cpu",
                    metric_weights={"pickscore": str(mdir)})
    ref, q, drop = res["bf16"]["pickscore"], res["q"]["pickscore"], res["q"]["pickscore_drop"]
    assert ref["status"] == q["status"] == drop["status"] == "ok" and drop["n"] == 3
    assert drop["mean"] == pytest.approx(ref["mean"] - q["mean"], abs=1e-9)
    for pid, v in drop["per_prompt"].items():
        assert v == pytest.approx(ref["per_prompt"][pid] - q["per_prompt"][pid], abs=1e-9)
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mdir.iterdir()}
    assert set(want) == {"config.json", "model.safetensors"}
    # the exact files behind the numbers, in the metric's record and in its drop's
    assert q["weights_sha256"] == want and drop["weights_sha256"] == want and q["model"] == str(mdir)
    assert q["n_truncated_prompts"] == 0 and "77" in q["truncation"] and q["higher_is_better"] is True
    assert drop["higher_is_better"] is False
    # the record is the metric's numbers on these images
    from PIL import Image

    from evalkit.io import read_json

    gen = read_json(run / "generation" / "q.json")
    texts = {p["id"]: p["text"] for p in read_json(run / "manifest.json")["prompts"]}
    imgs = [np.asarray(Image.open(run / i["path"]).convert("RGB")) for i in gen["images"]]
    vals, _ = PickScoreMetric(metric_weights={"pickscore": str(mdir)}).score(imgs, [texts[i["prompt_id"]] for i in gen["images"]])
    assert q["mean"] == pytest.approx(float(np.mean(vals)), abs=1e-9)
