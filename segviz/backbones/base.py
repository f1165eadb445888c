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
