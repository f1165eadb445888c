"""Fully connected CRF (Kraehenbuehl & Koltun 2011, as DeepLab v1/v2 use it) on a model's
softmax and the RGB image, through ``pydensecrf`` (PyPI ``pydensecrf2`` builds it).

The import is guarded: without the package ``AVAILABLE`` is False and :func:`dense_crf`
raises a one-line error saying how to install it; the app disables its CRF controls.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

try:
    import pydensecrf.densecrf as dcrf
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    dcrf = None

AVAILABLE = dcrf is not None
INSTALL_HINT = "the dense CRF needs pydensecrf: pip install pydensecrf2"


class CRFError(ValueError):
    """Bad CRF input or parameters; the message is one line."""


@dataclass(frozen=True)
class CRFParams:
    """Defaults are pydensecrf's documented ones (DeepLab tunes per dataset: see crf-tune and :data:`PRESETS`)."""

    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    scale: float = 1.0  # working scale: < 1 runs the CRF on a downscaled image (large inputs)

    def check(self) -> "CRFParams":
        if not (isinstance(self.iterations, (int, np.integer)) and 1 <= self.iterations <= 50):
            raise CRFError(f"iterations must be an integer in 1..50, got {self.iterations!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if not float(getattr(self, name)) > 0:
                raise CRFError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            if not float(getattr(self, name)) >= 0:
                raise CRFError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.1 <= self.scale <= 1:
            raise CRFError(f"scale must be in [0.1, 1], got {self.scale!r}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


# What a model set's CRF starts at (the app's CRF panel, `predict --crf`, `review --crf`). CamVid's: per bilateral
# parameter, the value that most of the twelve architectures' grid searches chose on the drive their held-out
# runs never saw, each run at its input scale as bundled (assets/crf.json), scored for every architecture at once
# in assets/crf_preset.json (README, "The dense CRF's effect"). Other sets start at pydensecrf's defaults.
PRESETS = {"camvid": CRFParams(bilateral_sxy=10.0, bilateral_srgb=3.0, bilateral_compat=10.0)}


def preset(dataset: str) -> CRFParams:
    """The CRF parameters for models of ``dataset`` (a model set: "camvid", "voc")."""
    return PRESETS.get(dataset, CRFParams())


def usable_preset(dataset: str) -> CRFParams:
    """:func:`preset`, for work about to run the CRF: a one-line error saying how to install pydensecrf first."""
    if not AVAILABLE:
        raise CRFError(INSTALL_HINT)
    return preset(dataset)


def _check_inputs(probs, image) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(probs, np.ndarray) or probs.ndim != 3:
        raise CRFError(f"probabilities must be a (C, H, W) array, got {getattr(probs, 'shape', type(probs))}")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise CRFError(f"image must be an (H, W, 3) array, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise CRFError(f"image must be uint8 RGB, got {image.dtype}")
    if probs.shape[1:] != image.shape[:2]:
        raise CRFError(f"probabilities are {probs.shape[1]}x{probs.shape[2]} but the image is "
                       f"{image.shape[0]}x{image.shape[1]}")
    if probs.shape[0] < 2:
        raise CRFError("the CRF needs at least 2 classes")
    probs = np.require(probs, np.float32, ["C", "W"])
    lo, hi = float(probs.min()), float(probs.max())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1 + 1e-4):
        raise CRFError(f"probabilities must be finite and in [0, 1] (softmax output), got range [{lo:.3g}, {hi:.3g}]")
    return probs, np.require(image, np.uint8, ["C", "W"])  # pydensecrf wants writable C arrays


def _resize(a: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    from PIL import Image

    resample = Image.BILINEAR if order else Image.NEAREST
    if a.ndim == 2 or a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((size[1], size[0]), resample))
    return np.stack([np.asarray(Image.fromarray(c, mode="F").resize((size[1], size[0]), resample)) for c in a])


def dense_crf(probs: np.ndarray, image: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refined marginals (C, H, W) float32 from softmax ``probs`` (C, H, W) and ``image`` (H, W, 3) uint8."""
    if not AVAILABLE:
        raise CRFError(INSTALL_HINT)
    params.check()
    probs, image = _check_inputs(probs, image)
    c, h, w = probs.shape
    if params.scale < 1:
        small = (max(2, round(h * params.scale)), max(2, round(w * params.scale)))
        q = dense_crf(_resize(probs, small, 1), _resize(image, small, 1),
                      CRFParams(**{**params.as_dict(), "scale": 1.0,
                                   "gaussian_sxy": params.gaussian_sxy * params.scale,
                                   "bilateral_sxy": params.bilateral_sxy * params.scale}))
        return _resize(q, (h, w), 1)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(c, -1)))
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image,
                           compat=params.bilateral_compat)
    return np.asarray(d.inference(params.iterations), dtype=np.float32).reshape(c, h, w)
