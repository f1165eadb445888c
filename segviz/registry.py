"""One registry of every trained or trainable configuration, keyed ``<arch>_<backbone>``."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # importing the registry does not import torch (listing records stays fast)
    from torch import nn


# The backbone of the compact configurations, the ones trained on CamVid and bundled.
COMPACT_BACKBONE = "mobilenet_edgetpu"
# Backbones tried against it: their configurations are trained with a sequence held out and bundled only if they
# pay (README, the "on trial" paragraphs of "Validation that predicts quality on unseen drives"). EfficientNet-Lite0
# was the compact backbone until MobileNet-EdgeTPU's held-out runs beat it; its held-out runs stay on record.
TRIAL_BACKBONES = ("efficientnet_lite2", "efficientnet_lite0")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key, <arch>_<backbone>
    arch: str  # fcn8s, segnet, deeplabv3, ...
    title: str  # what the UI shows
    paper: str
    year: int
    arxiv: str
    voc12_miou: float | None  # PASCAL VOC 2012 test mIoU as the 2017 review quotes it
    backbone: str
    output_stride: int  # stride of the map the logits are computed at, before the last upsampling to the input
    key_idea: str
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    order: int = 0  # position in the 2017 review's story (FCN first, U-Net last); ties keep faithful before compact
    compact: bool = field(default=False, init=False)  # from the backbone: COMPACT_BACKBONE, trained and bundled
    trial: bool = field(default=False, init=False)  # from the backbone: TRIAL_BACKBONES, bundled only if it pays
    aux: bool = False  # returns an auxiliary head's logits as "aux" in train mode
    config: object = field(default=None, repr=False, compare=False)  # the architecture's config dataclass
    short: str = ""  # overlay and chart labels; default: the title without its parenthesis

    def __post_init__(self):
        object.__setattr__(self, "short", self.short or short_title(self.title))
        object.__setattr__(self, "compact", self.backbone == COMPACT_BACKBONE)
        object.__setattr__(self, "trial", self.backbone in TRIAL_BACKBONES)

    def branches(self) -> list:
        """The dilated / pooled branches the model declares (``segviz.dilation.Branch``); [] if none."""
        declare = getattr(self.config, "branches", None)
        return list(declare()) if declare is not None else []

    @property
    def arxiv_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


# What a bundled model's manifest entry copies from its spec, so that listing records needs neither the
# model modules nor torch (tests/test_bundled_weights.py checks they still agree).
SPEC_FIELDS = ("title", "short", "arch", "order")


def spec_fields(spec: ModelSpec) -> dict:
    return {k: getattr(spec, k) for k in SPEC_FIELDS}


def short_title(title: str) -> str:
    """A title without its parenthesis: "DeepLab v2 (ASPP)" -> "DeepLab v2"."""
    return title.split(" (")[0]


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return self.args[0]


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_models() -> None:
    from . import models  # noqa: F401  (imports every module in segviz/models, which register themselves)


def list_models(*, compact: bool | None = None) -> list[ModelSpec]:
    _load_models()
    specs = [s for s in _REGISTRY.values() if compact is None or s.compact == compact]
    return sorted(specs, key=lambda s: (s.order, s.compact))


def names() -> list[str]:
    _load_models()
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_models()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its builder (``num_classes``, ``backbone_weights``...)."""
    spec = get_spec(name)
    params = inspect.signature(spec.builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{name} got unknown argument(s) {', '.join(unknown)}; it accepts: {', '.join(params)}")
    n = kwargs.get("num_classes", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_classes must be a positive integer, got {n!r}")
    return spec.builder(**kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
