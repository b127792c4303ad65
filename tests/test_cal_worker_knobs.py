"""The generate worker's numerics knobs (EVALKIT_THREADS / EVALKIT_TF32 / EVALKIT_SDPA_BACKEND): applied, stated
as in force, and refused when not understood (a calibration must never run under settings it did not ask for)."""

from __future__ import annotations

import pytest
import torch

from evalkit.generate.worker import apply_numerics, sdpa_context


@pytest.fixture(autouse=True)
def restore_torch_state():
    threads, tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    yield
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = tf32


def test_knobs_are_applied_and_stated(monkeypatch) -> None:
    monkeypatch.setenv("EVALKIT_THREADS", "1")
    monkeypatch.setenv("EVALKIT_TF32", "1")
    monkeypatch.setenv("EVALKIT_SDPA_BACKEND", "math")
    got = apply_numerics(torch)
    assert got == {"intra_op_threads": 1, "tf32_matmul": True, "sdpa_backend": "math"}
    assert torch.get_num_threads() == 1
    q = torch.randn(1, 2, 4, 8)
    with sdpa_context(torch, "math"):  # the math kernel runs everywhere; the result equals the default's here
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q))


@pytest.mark.parametrize("var,value", [("EVALKIT_THREADS", "0"), ("EVALKIT_THREADS", "two"), ("EVALKIT_TF32", "yes"),
                                       ("EVALKIT_SDPA_BACKEND", "fastest")])
def test_knob_not_understood_is_an_error(monkeypatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        apply_numerics(torch)
