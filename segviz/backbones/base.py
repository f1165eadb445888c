"""What every backbone offers the segmentation heads."""
from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor with five levels at nominal strides 2, 4, 8, 16, 32.

    ``channels[i]`` is the width of level ``i``; ``output_stride`` caps the real stride
    (levels past it are dilated instead of downsampled). ``mean``/``std`` are the input
    normalisation of the ImageNet weights.
    """

    channels: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_stride: int

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_levels(x)


def dilate_past(output_stride: int, convs: list[nn.Conv2d], down_blocks: list[int]) -> None:
    """Set the strides and dilations of a block stack's spatial convolutions (``convs``, one per block) for
    ``output_stride`` (DeepLab's atrous trick): the blocks in ``down_blocks`` downsample in the ImageNet
    network; past ``output_stride`` they keep stride 1 and each doubles the dilation of the blocks after it."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    stride, rate = 2, 1
    for i, conv in enumerate(convs):
        step = 1
        if i in down_blocks:
            if stride < output_stride:
                stride, step = stride * 2, 2
            else:
                rate *= 2
        # The first block of a dilated stage keeps the previous rate (as torchvision's ResNet).
        d = 1 if step == 2 else (rate // 2 if i in down_blocks else rate)
        conv.stride, conv.dilation = (step, step), (d, d)
        conv.padding = (d * (conv.kernel_size[0] // 2),) * 2
