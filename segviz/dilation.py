"""Dilation patterns: which input pixels a (stack of) dilated convolution(s) touches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import registry


def taps(rate: int, kernel: int = 3) -> np.ndarray:
    """(kernel**2, 2) offsets (dy, dx) of a kernel x kernel conv with dilation ``rate``."""
    if rate < 1 or kernel < 1:
        raise ValueError(f"rate and kernel must be positive, got rate={rate}, kernel={kernel}")
    r = np.arange(kernel) - kernel // 2
    dy, dx = np.meshgrid(r * rate, r * rate, indexing="ij")
    return np.stack([dy.ravel(), dx.ravel()], 1)


def stacked_coverage(rates: list[int], kernel: int = 3) -> np.ndarray:
    """How many paths through a stack of dilated convs reach each input offset.

    The array is centred on the output pixel; zeros inside the field are the "gridding"
    holes (rates 2, 2, 2 touch only every other pixel; 1, 2, 5 touch all, Wang et al. 2018)."""
    if not rates:
        raise ValueError("give at least one rate")
    cover = np.ones((1, 1), np.int64)
    for rate in rates:
        t = taps(rate, kernel)
        half = cover.shape[0] // 2 + int(np.abs(t).max())
        out = np.zeros((2 * half + 1, 2 * half + 1), np.int64)
        c = cover.shape[0] // 2
        for dy, dx in t:
            out[half + dy - c: half + dy + c + 1, half + dx - c: half + dx + c + 1] += cover
        cover = out
    return cover


def holes(coverage: np.ndarray) -> int:
    """Pixels inside the field's bounding box that no path reaches."""
    ys, xs = np.nonzero(coverage)
    box = coverage[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    return int((box == 0).sum())


@dataclass(frozen=True)
class Branch:
    """One dilated (or pooled) branch of a model, in input pixels."""

    label: str
    rate: int  # dilation rate at its feature map (0 for a pooling branch)
    stride: int  # the feature map's stride
    kernel: int = 3
    bins: int = 0  # pyramid pooling: the image is cut into bins x bins cells

    @property
    def spacing(self) -> int:
        return self.rate * self.stride


def _voc_branches(name: str) -> list[Branch] | None:
    """Branches of the VOC records (foreign networks, not in the registry), or None for any other name."""
    if not name.endswith(".voc"):
        return None
    if name.startswith("deeplabv3_mnv2"):  # MobileNetV2 DeepLab v3: dilated last stage + image pooling, no atrous ASPP
        return [Branch("last stage: 3x3 depthwise, rate 2", 2, 16), Branch("image pooling", 0, 16, bins=1)]
    if name.startswith("deeplabv3_"):  # torchvision: ASPP rates 12/24/36
        os_ = 16 if "mobilenet" in name else 8
        return ([Branch("1x1", 1, os_, kernel=1)] + [Branch(f"ASPP rate {r}", r, os_) for r in (12, 24, 36)] +
                [Branch("image pooling", 0, os_, bins=1)])
    return None


def model_branches(name: str) -> list[Branch]:
    """The dilated and pooled branches of a model that the Dilation tab draws (the model's config declares them)."""
    voc = _voc_branches(name)
    if voc is not None:
        return voc
    branches = registry.get_spec(name).branches()
    if not branches:
        with_branches = sorted({s.arch for s in registry.list_models() if s.branches()})
        raise ValueError(f"{name} has no dilated or pyramid branches; try one of: {', '.join(with_branches)}")
    return branches
