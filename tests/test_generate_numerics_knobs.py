"""The generate worker's numerics knobs (--threads / --tf32 / --sdpa-backend, read from the manifest's
config.numerics and the unit file): applied, stated as in force, and refused when not understood (a calibration must
never run under settings it did not ask for)."""

from __future__ import annotations

import pytest
import torch

from evalkit.generate.worker.run import (apply_numerics, numerics_state, requested_numerics, restore_numerics,
                                         sdpa_context)


@pytest.fixture(autouse=True)
def restore_torch_state():
    threads, tf32, precision = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, \
        torch.get_float32_matmul_precision()
    yield
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(precision)
    torch.backends.cuda.matmul.allow_tf32 = tf32


def test_knobs_are_applied_and_stated() -> None:
    got = apply_numerics(torch, {"threads": 1, "tf32": True, "sdpa_backend": "math"})
    assert got == {"intra_op_threads": 1, "tf32_matmul": True, "sdpa_backend": "math"}
    assert torch.get_num_threads() == 1
    # Seeded: the math kernel and the CPU default differ in the last bits, by an amount that depends on the input.
    q = torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    with sdpa_context(torch, "math"):  # the math kernel runs everywhere; the result equals the default's here
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-6)


def test_nothing_asked_changes_nothing() -> None:
    before = torch.get_num_threads()
    assert apply_numerics(torch, {}) == {"intra_op_threads": before, "tf32_matmul": False, "sdpa_backend": None}


@pytest.mark.parametrize("asked,name", [({"threads": 0}, "threads"), ({"threads": "two"}, "threads"),
                                        ({"threads": True}, "threads"), ({"tf32": "yes"}, "tf32"),
                                        ({"sdpa_backend": "fastest"}, "sdpa_backend"), ({"fast": 1}, "fast")])
def test_knob_not_understood_is_an_error(asked: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        apply_numerics(torch, asked)


def test_the_unit_files_thread_count_is_the_rank_s_word() -> None:
    """The manifest holds what the command asked for; a rank writes into each unit file the threads its worker uses
    (--threads, or its share of the machine's cores), and that wins."""
    cfg = {"numerics": {"threads": 3, "tf32": False}}
    assert requested_numerics(cfg, None) == {"threads": 3, "tf32": False}
    assert requested_numerics(cfg, {"threads": 2}) == {"threads": 2, "tf32": False}
    assert requested_numerics({}, {"threads": None}) == {}


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
