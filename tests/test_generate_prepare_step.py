"""quanto-int4's one-time kernel build is a `prepare` step on a CPU as on a GPU (issue #16.4): the build of
optimum-quanto's extension happens before the load clock starts, not inside `load`."""

from __future__ import annotations

import pytest

from evalkit.quantizers.base import BuildContext
from evalkit.quantizers.registry import BACKENDS, quantizer_for


def test_quanto_int4_prepares_the_cpu_kernels_off_the_load_clock() -> None:
    pytest.importorskip("optimum.quanto")
    backend = BACKENDS["quanto-int4"]
    ctx = BuildContext(device="cpu", capability=None, model_path="", options={}, cache_dir="")
    done = quantizer_for(backend).prepare(backend, ctx)
    assert quantizer_for(BACKENDS["quanto-int8"]).prepare(BACKENDS["quanto-int8"], ctx) is None  # int4 only
    assert done is not None and done["extension"] == "quanto_cpp", done
    assert done["seconds"] >= 0
    import torch

    # The op quanto's int4 weights unpack with now has its CPU kernel: a load would not build it again.
    packed = torch.zeros((4, 2), dtype=torch.uint8)
    assert torch.ops.quanto.unpack(packed, 4).shape == (8, 2)
