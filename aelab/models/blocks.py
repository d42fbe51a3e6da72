"""Building blocks of the residual U-Net."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualBlock"]


class ResidualBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with a 1×1 projection shortcut (the seed report's block).

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))``. The shortcut is always a 1×1
    convolution, as in the seed, so the parameter count of the ``seed`` preset matches the report.

    Args:
        in_channels: channels of the input map.
        out_channels: channels of the output map (spatial size is kept).

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.skip(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)
