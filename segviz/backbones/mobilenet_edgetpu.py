"""MobileNet-EdgeTPU, "slim" (Gupta & Tan 2019; arXiv 2003.02838), with the weights of Coral's
Cityscapes DeepLab: a segmentation backbone that has already seen street scenes.

``deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite`` (google-coral/test_data, Apache-2.0) is
DeepLab v3 on this network, trained on Cityscapes (19 classes), int8. Its graph, as the flatbuffer
lists it: a 3x3 stride-2 stem (24 ch) and a 1x1 projection to 16; eight *fused* inverted residuals,
whose expansion is a full 3x3 convolution (24 and 40 ch, at strides 4 and 8); thirteen ordinary
ones (1x1 expand, 3x3 or 5x5 depthwise, 1x1 project; 72, 120 and 144 ch at stride 16, the last
stage dilated 2 instead of strided); ``Conv_1``, a 1x1 convolution to 1280; then a light ASPP
(1x1 branch and image pooling) and the 19-class logits, which segviz does not use for CamVid.

Weights: every convolution's int8 weights and int32 bias are dequantised (``scale * (q - zero)``);
batch norm is folded into them in the file, so the convolutions here carry a bias and no batch
norm. ``tests/test_reference_networks.py`` checks that this module with the file's ASPP and logits
reproduces the TFLite graph's float arithmetic.

Deviation from the reference: symmetric padding ``dilation * (k // 2)`` instead of TensorFlow's
"SAME" (identical at sizes 16k+1, such as the 513x513 the model was trained on), so that strides
can be swapped for dilation without special cases, as in ``efficientnet_lite``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .base import Backbone, dilate_past

FILE = "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
SHA256 = "322fe29945cb1693f426952f2a330ab67ea5678545ddee6f2548e0cfd0ca03e5"
URL = "https://raw.githubusercontent.com/google-coral/test_data/master/" + FILE
PRETRAINED_NAME = "mobilenet_edgetpu.cityscapes"  # what `segviz weights download` calls the file

# (fused, kernel, stride, expanded channels, out channels) per inverted residual, in the file's order.
# A block adds its input when it keeps stride and width and does not start a stage (13, 17 and 21 start
# one in MobileNet-EdgeTPU; in the slim form 13 keeps the width but still has no residual).
_BLOCKS = [(True, 3, 2, 128, 24)] + [(True, 3, 1, 96, 24)] * 3 \
    + [(True, 3, 2, 192, 40)] + [(True, 3, 1, 160, 40)] * 3 \
    + [(False, 3, 2, 320, 72)] + [(False, 3, 1, 288, 72)] * 3 \
    + [(False, 3, 1, 576, 72)] + [(False, 3, 1, 288, 72)] * 3 \
    + [(False, 5, 2, 576, 120)] + [(False, 5, 1, 480, 120)] * 3 \
    + [(False, 3, 1, 960, 144)]
_STAGE_STARTS = {13, 17, 21}  # 1-based, as the file names them: expanded_conv_13, _17, _21

# The input quantisation of the file (uint8, zero point 128, scale 1/127.5): (x - 128) / 127.5.
MEAN = (128 / 255,) * 3
STD = (127.5 / 255,) * 3


def conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)]  # batch norm folded in
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Fused: kxk expand (the strided/dilated conv) -> 1x1 project. Ordinary: 1x1 expand -> kxk depthwise
    (the strided/dilated conv) -> 1x1 project."""

    def __init__(self, cin: int, fused: bool, k: int, stride: int, mid: int, cout: int, residual: bool):
        super().__init__()
        if fused:
            self.expand, self.spatial = nn.Identity(), conv(cin, mid, k, stride)
        else:
            self.expand, self.spatial = conv(cin, mid), conv(mid, mid, k, stride, groups=mid)
        self.project = conv(mid, cout, act=False)
        self.residual = residual

    def forward(self, x):
        y = self.project(self.spatial(self.expand(x)))
        return x + y if self.residual else y


class MobileNetEdgeTPU(Backbone):
    """Five feature levels at strides 2, 4, 8, 16, 32 (16, 24, 40, 72, 144 channels), plus ``head``
    (``Conv_1``, 1x1 to 1280) when asked for."""

    mean, std = MEAN, STD

    def __init__(self, output_stride: int = 32, with_head: bool = False):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 24, 3, 2), conv(24, 16, act=False))
        blocks, cin = [], 16
        for n, (fused, k, s, mid, cout) in enumerate(_BLOCKS, start=1):
            blocks.append(InvertedResidual(cin, fused, k, s, mid, cout, s == 1 and cin == cout and n not in _STAGE_STARTS))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        # The blocks that downsample in the ImageNet network (levels 2-5); block 17 is one, although the
        # Cityscapes model runs it at stride 1 (output stride 16).
        self.down_blocks = [i for i, (_, _, s, _, _) in enumerate(_BLOCKS) if s == 2]
        self.level_ends = (-1, *(i - 1 for i in self.down_blocks[1:]), len(blocks) - 1)
        self.channels = (16, *(_BLOCKS[i][4] for i in self.level_ends[1:]))
        self.head = conv(cin, 1280) if with_head else None
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Swap strides for dilation after ``output_stride`` (as ``EfficientNetLite.set_output_stride``)."""
        dilate_past(output_stride, [block.spatial[0] for block in self.blocks], self.down_blocks)
        self.output_stride = output_stride

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.level_ends:
                feats.append(x)
        return feats

    def convs(self) -> list[nn.Conv2d]:
        """Every convolution in the file's operator order (stem, blocks, head)."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------------------------------------- weights
def locations() -> list[Path]:
    from .. import SHARED_DIR
    from ..data.voc import user_cache
    from ..weights import WEIGHTS_DIR

    return [SHARED_DIR / "models" / "coral" / FILE, WEIGHTS_DIR / FILE, user_cache() / FILE]


def find_file() -> Path:
    """The Coral file, sha256-checked; a one-line error saying how to get it when it is missing."""
    from ..weights import WeightsError, sha256_file

    path = next((p for p in locations() if p.exists()), None)
    if path is None:
        raise WeightsError(f"the Cityscapes MobileNet-EdgeTPU weights are not on this machine; get them with: "
                           f"python -m segviz weights download {PRETRAINED_NAME} (or put {URL} "
                           f"in {locations()[-1].parent})")
    if sha256_file(path) != SHA256:
        raise WeightsError(f"{path} is not the published {FILE} (sha256 differs); delete it and download again")
    return path


def fetch(dest_dir: str | os.PathLike | None = None, url: str | None = None, progress: bool = True) -> Path:
    """Download the Coral file (from ``url`` if given: a mirror) into the user cache, sha256-checked."""
    from ..data.voc import user_cache
    from ..weights import download

    return download(url or URL, Path(dest_dir or user_cache()) / FILE, sha256=SHA256, progress=progress)


def tflite_convs(path: str | os.PathLike) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight OIHW, bias) of every CONV_2D / DEPTHWISE_CONV_2D in the file, dequantised, in operator order."""
    from ..models.tflite_port import TFLiteGraph

    graph = TFLiteGraph(path, emulate_int8=False)
    return [(graph.params[f"w{i}"].data, graph.params[f"b{i}"].data)
            for i, op in enumerate(graph.ops) if op["kind"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]


def load_cityscapes(model: MobileNetEdgeTPU, path: str | os.PathLike | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copy the file's backbone convolutions into ``model``; returns the ones left over (ASPP, logits)."""
    found = tflite_convs(path or find_file())
    mine = model.convs()
    n = len(mine) if model.head is not None else len(mine) + 1  # Conv_1 follows the blocks in the file
    with torch.no_grad():
        for c, (w, b) in zip(mine, found[:n]):
            if c.weight.shape != w.shape:
                raise ValueError(f"{FILE}: a convolution of shape {tuple(w.shape)} where {tuple(c.weight.shape)} "
                                 f"was expected: not the slim MobileNet-EdgeTPU")
            c.weight.copy_(w)
            c.bias.copy_(b)
    return found[n:]


def mobilenet_edgetpu(*, weights: str | None = None, output_stride: int = 32, with_head: bool = False) -> MobileNetEdgeTPU:
    model = MobileNetEdgeTPU(output_stride=output_stride, with_head=with_head)
    if weights == "cityscapes":
        load_cityscapes(model)
    elif weights is not None:
        raise ValueError(f"unknown weights {weights!r} for mobilenet_edgetpu; choose 'cityscapes' or None")
    return model


