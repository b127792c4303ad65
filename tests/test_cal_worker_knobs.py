"""The generate worker's numerics knobs (EVALKIT_THREADS / EVALKIT_TF32 / EVALKIT_SDPA_BACKEND): applied, stated
as in force, and refused when not understood (a calibration must never run under settings it did not ask for)."""

from __future__ import annotations

import pytest
import torch

from evalkit.generate.worker.run import apply_numerics, numerics_state, restore_numerics, sdpa_context


@pytest.fixture(autouse=True)
def restore_torch_state():
    threads, tf32, precision = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, \
        torch.get_float32_matmul_precision()
    yield
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(precision)
    torch.backends.cuda.matmul.allow_tf32 = tf32


def test_knobs_are_applied_and_stated(monkeypatch) -> None:
    monkeypatch.setenv("EVALKIT_THREADS", "1")
    monkeypatch.setenv("EVALKIT_TF32", "1")
    monkeypatch.setenv("EVALKIT_SDPA_BACKEND", "math")
    got = apply_numerics(torch)
    assert got == {"intra_op_threads": 1, "tf32_matmul": True, "sdpa_backend": "math"}
    assert torch.get_num_threads() == 1
    # Seeded: the math kernel and the CPU default differ in the last bits, by an amount that depends on the input.
    q = torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    with sdpa_context(torch, "math"):  # the math kernel runs everywhere; the result equals the default's here
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-6)


@pytest.mark.parametrize("var,value", [("EVALKIT_THREADS", "0"), ("EVALKIT_THREADS", "two"), ("EVALKIT_TF32", "yes"),
                                       ("EVALKIT_SDPA_BACKEND", "fastest")])
def test_knob_not_understood_is_an_error(monkeypatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        apply_numerics(torch)


def test_what_loading_changed_is_put_back_and_stated() -> None:
    """A library that sets TF32 while loading (torchao 0.17's recommended settings do) must not change the backend's
    arithmetic beside its quantization: the worker restores the run's settings and the record says what happened."""
    before = numerics_state(torch)
    assert restore_numerics(torch, before) == {}
    torch.set_float32_matmul_precision("high")  # what torchao 0.17's recommended_inductor_config_setter does
    changed = restore_numerics(torch, before)
    assert changed["float32_matmul_precision"] == {"set_by_loading": "high",
                                                   "restored_to": before["float32_matmul_precision"]}
    assert numerics_state(torch) == before
