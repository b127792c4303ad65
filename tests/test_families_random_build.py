"""A random full-size build is made one component at a time (evalkit.families.base.save_one_at_a_time), so that a
variant larger than the GPU, FLUX.2-dev's 104 GiB on an 80 GB card, can be built at all. It must write what building
every component at once and saving the pipeline writes, byte for byte: the same RNG draws in the same order, the same
model_index.json. Checked on each family's tiny configs on the CPU, with its random-weight scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.families.base import save_one_at_a_time, save_pipeline
from evalkit.families.registry import families


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", families(), ids=lambda f: f.key)
def test_one_at_a_time_writes_what_the_whole_build_writes(family, tmp_path: Path) -> None:
    import torch

    scale = dict(family.random_weight_scale) or {family.denoiser.name: 0.5}
    torch.manual_seed(0)
    modules = family.build_modules(family.tiny_configs)
    with torch.no_grad():
        for name, factor in scale.items():
            for p in modules[name].parameters():
                p.mul_(factor)
    save_pipeline(family, {**modules, **family.build_extras()}, tmp_path / "whole", max_shard_size="20MB")

    torch.manual_seed(0)
    save_one_at_a_time(family, family.tiny_configs, family.build_extras(), tmp_path / "each", device="cpu",
                       scale=scale, max_shard_size="20MB")

    whole, each = _files(tmp_path / "whole"), _files(tmp_path / "each")
    assert sorted(whole) == sorted(each)
    differ = [name for name in whole if whole[name] != each[name]]
    assert not differ, f"{family.key}: files differ: {differ}"
    assert any(name.endswith(".safetensors") for name in whole)


def test_a_partial_config_builds_only_its_components() -> None:
    """build_named: the contract ensure_random relies on, and an unknown component is refused by name."""
    import torch

    from evalkit.families.registry import get_family

    fam = get_family("flux2")
    with torch.device("meta"):
        built = fam.build_modules({"vae": fam.tiny_configs["vae"]})
        assert list(built) == ["vae"]
        with pytest.raises(ValueError, match="no builder for \\['unet'\\]"):
            fam.build_modules({"unet": {}})
