"""The broken-output tripwires (evalkit.tripwires) on synthetic arrays: each failure trips its own tripwire, healthy
images (and a reference with its own high-frequency texture) trip none, a tripwire that fails is not evaluated."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit import tripwires as tw


def natural(seed: int = 0, n: int = 128) -> np.ndarray:
    """A 1/f-spectrum image, the spectrum of photographs."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2)
    f[0, 0] = 1
    chans = []
    for _ in range(3):
        img = np.real(np.fft.ifft2((rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / f))
        chans.append((img - img.mean()) / img.std())
    return np.clip(np.stack(chans, axis=2) * 40 + 128, 0, 255).astype(np.uint8)


def checker(shape: tuple[int, ...], amp: float, period: int = 2) -> np.ndarray:
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (np.where(((y // (period // 2)) + (x // (period // 2))) % 2 == 0, 1.0, -1.0) * amp)[:, :, None]


def healthy_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ref = natural(seed)
    rng = np.random.default_rng(seed + 100)
    img = np.clip(ref.astype(float) + rng.normal(0, 2, ref.shape), 0, 255).astype(np.uint8)
    return img, ref


def tripped(results: list[dict]) -> list[str]:
    return [r["tripwire"] for r in results if r["tripped"]]


def test_healthy_images_trip_nothing() -> None:
    for seed in range(4):
        img, ref = healthy_pair(seed)
        assert tripped(tw.image_tests(img, ref)) == []
        assert tripped(tw.image_tests(ref, None)) == []


def test_a_reference_with_its_own_period_2_texture_is_not_a_grid() -> None:
    ref = np.clip(natural(1).astype(float) + checker((128, 128), 20), 0, 255).astype(np.uint8)
    img = np.clip(ref.astype(float) + np.random.default_rng(0).normal(0, 2, ref.shape), 0, 255).astype(np.uint8)
    assert tripped(tw.image_tests(img, ref)) == []


@pytest.mark.parametrize("fill, what", [(0, "all black"), (255, "all white"), (97, "one colour")])
def test_near_constant_images(fill: int, what: str) -> None:
    img = np.full((64, 64, 3), fill, dtype=np.uint8)
    r = tw.constant(img)
    assert r["tripped"] and what in r["reason"] and r["value"] == 0.0 and r["level"] == tw.TRIPWIRES["constant"].level


def test_constant_on_float_pixels_with_nan_is_what_the_png_would_hold() -> None:
    arr = np.full((32, 32, 3), np.nan, dtype=np.float32)  # a VAE decoding NaN: 0 in the PNG
    assert tw.constant(arr)["tripped"]
    assert tw.count_nonfinite(arr) == 32 * 32 * 3
    nf = tw.nonfinite_result(10, 3072)
    assert nf["tripped"] and nf["value"] == 3082 and "latents 10" in nf["reason"]
    assert not tw.nonfinite_result(0, 0)["tripped"] and not tw.nonfinite_result(None, 0)["tripped"]


def test_count_nonfinite_on_a_torch_tensor_stays_a_tensor_reduction() -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(2, 4)
    t[1, 2] = float("inf")
    assert tw.count_nonfinite(t) == 1


def test_saturated_unless_the_reference_is_too() -> None:
    ref = natural(2)
    img = np.where(ref > 128, 255, 0).astype(np.uint8)
    assert tw.saturated(img, ref)["tripped"]
    assert not tw.saturated(img, img)["tripped"]  # a black-and-white drawing of a black-and-white reference
    assert not tw.saturated(img)["tripped"]  # no reference: a night sky is mostly black (constant judges it alone)


@pytest.mark.parametrize("amp, period, trips", [(8, 2, True), (4, 2, True), (8, 8, True), (1, 2, False)])
def test_checkerboard_and_grid_overlays(amp: float, period: int, trips: bool) -> None:
    img, ref = healthy_pair(3)
    bad = np.clip(img.astype(float) + checker(img.shape, amp, period), 0, 255).astype(np.uint8)
    r = tw.grid(bad, ref)
    assert r["tripped"] is trips, r
    if trips:
        assert f"period {period}" in r["reason"]


def test_a_broadband_difference_is_not_called_a_grid() -> None:
    ref = natural(4)
    contrast = np.clip((ref.astype(float) - 128) * 8 + 128, 0, 255).astype(np.uint8)
    assert not tw.grid(contrast, ref)["tripped"]


def test_unrelated_image() -> None:
    img, ref = healthy_pair(5)
    other = natural(6)
    r = tw.unrelated(other, ref)
    assert r["tripped"] and r["value"] < tw.TRIPWIRES["unrelated"].level
    assert not tw.unrelated(img, ref)["tripped"]
    assert tw.unrelated(np.zeros_like(ref), ref)["not_evaluated"]  # flat: nothing to correlate


def test_a_reference_that_is_itself_constant_leaves_the_paired_tests_not_evaluated() -> None:
    ref = np.zeros((64, 64, 3), dtype=np.uint8)
    res = {r["tripwire"]: r for r in tw.image_tests(natural(7, 64), ref)}
    assert res["grid"]["not_evaluated"] and res["unrelated"]["not_evaluated"]


def test_a_tripwire_that_fails_is_not_evaluated_and_never_raises() -> None:
    r = tw.constant(np.zeros((2, 2, 2, 2)))
    assert r["not_evaluated"] and not r["tripped"]
    r = tw.grid(np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))
    assert r["not_evaluated"] and "differ in size" in r["not_evaluated"]


def test_entries_name_the_first_tripwire_and_keep_the_others() -> None:
    e = tw.entry_from(tw.image_tests(np.zeros((64, 64, 3), np.uint8), natural(8, 64)), prompt_id="p00", seed=1,
                      file="images/x/p00_s1.png")
    assert e is not None and e["tripwire"] == "constant" and [o["tripwire"] for o in e["others"]] == ["saturated"]
    assert "all black" in tw.all_reasons(e) and "clipped" in tw.all_reasons(e)
    gen = {"scope": "image", "prompt_id": "p00", "seed": 1, "tripwire": "nonfinite", "reason": "nan", "value": 3,
           "level": 0}
    merged = tw.merge_entries([gen], [e])
    assert len(merged) == 1 and merged[0]["tripwire"] == "nonfinite"
    assert [o["tripwire"] for o in merged[0]["others"]] == ["constant", "saturated"]
    assert tw.entry_from(tw.image_tests(*healthy_pair(9))) is None


def test_backend_level_tripwires() -> None:
    gen = {"status": "ok", "backend": "q", "recipe": {"name": "q", "library": "lib"},
           "quantization": {"components_quantized": ["transformer"], "quantized_linear_count": {"transformer": 0}}}
    e = tw.not_quantized(gen, reference=False)
    assert e is not None and e["scope"] == "backend" and "transformer" in e["reason"]
    assert tw.not_quantized(gen, reference=True) is None
    gen["quantization"]["quantized_linear_count"]["transformer"] = 3
    assert tw.not_quantized(gen, reference=False) is None
    ref_like = {"status": "ok", "recipe": {"name": "bf16+offload", "library": "torch"},
                "quantization": {"components_quantized": ["transformer"], "quantized_linear_count": {"transformer": 0}}}
    assert tw.not_quantized(ref_like, reference=False) is None and tw.reference_based(ref_like)
    assert tw.identical_to_reference({"a": "1", "b": "2"}, {"a": "1", "b": "2"})["tripwire"] == "identical_to_reference"
    assert tw.identical_to_reference({"a": "1", "b": "3"}, {"a": "1", "b": "2"}) is None
    assert tw.count_broken([e], 7) == 7
    assert tw.count_broken([{"prompt_id": "a"}, {"prompt_id": "b"}], 7) == 2


def test_every_tripwire_says_what_it_detects_its_level_and_why() -> None:
    for t in tw.TRIPWIRES.values():
        assert t.detects and t.unit and len(t.why) > 40 and t.when in ("generate", "score", "both", "backend")


def test_the_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, evalkit.tripwires; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_set_metrics_judge_each_image_alone_not_against_a_partner(tmp_path):
    """FID/KID compare two sets: images in the same position are not partners, so an unrelated image is no fault
    there (the grid and unrelated tests need a partner), while a black image is still broken and left out."""
    from PIL import Image

    from evalkit.score.compare import compare_folders

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i in range(4):
        Image.fromarray(natural(i, 64)).save(a / f"{i}.png")
        Image.fromarray(natural(10 + i, 64) if i else np.zeros((64, 64, 3), np.uint8)).save(b / f"{i}.png")
    res = compare_folders(a, b, "fid", device="cpu", workers=1)
    if res["metrics"]["fid"]["status"] != "ok" and "n" not in res["metrics"]["fid"]:  # no Inception weights here
        pytest.skip(res["metrics"]["fid"].get("reason", "FID unavailable"))
    assert [(e["file"], e["tripwire"]) for e in res["broken"]] == [("0.png", "constant")]
    assert res["metrics"]["fid"]["n"] == 3  # the three unrelated but healthy images count
    paired = compare_folders(a, b, "psnr", device="cpu", workers=1)  # partners now: unrelated images trip
    assert {e["tripwire"] for e in paired["broken"]} >= {"unrelated"}
