"""The 13-block convolutional audio encoder shared by Audio2Exp and Audio2Pose (the Wav2Lip audio encoder).

It maps one video frame's mel window (80 mel bins x 16 mel frames) to a 512-d feature (all >= 0).
State-dict keys: `<block>.conv_block.0.*` (Conv2d) and `<block>.conv_block.1.*` (BatchNorm2d), blocks 0..12.
"""

from __future__ import annotations

import torch
from torch import nn

# (in, out, kernel, stride, padding, residual); spatial 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1.
_BLOCKS: tuple[tuple[int, int, int, int | tuple[int, int], int, bool], ...] = (
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)

FEATURE_SIZE = 512


class ConvNormBlock(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d -> [+ input] -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int | tuple[int, int],
                 padding: int, residual: bool):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return torch.relu(out)


class AudioEncoder(nn.Sequential):
    """Mel windows (N, 1, 80, 16) -> per-window features (N, 512), float, >= 0 (ReLU after every block)."""

    def __init__(self) -> None:
        super().__init__(*(
            ConvNormBlock(cin, cout, kernel_size=k, stride=s, padding=p, residual=res)
            for cin, cout, k, s, p, res in _BLOCKS
        ))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        x = windows
        for block in self:
            x = block(x)
        return x.reshape(x.shape[0], -1)
