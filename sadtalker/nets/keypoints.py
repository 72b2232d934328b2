"""Canonical 3-D keypoint detector of the face renderer (face-vid2vid KPDetector, no jacobian head).

State-dict keys = the official `kp_extractor.*` keys with the prefix stripped (`kp_detector.*` in the old
facevid2vid file).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock2d, UpBlock3d, make_coordinate_grid


def gaussian_kernel(*, channels: int, sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian, (channels, 1, k, k) with k = 2 * round(4 * sigma) + 1."""
    size = 2 * round(sigma * 4) + 1
    steps = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-(steps**2) / (2 * sigma**2))
    kernel = profile[:, None] * profile[None, :]
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, size, size).clone()


class AntiAliasDownsample(nn.Module):
    """Blur with the stored depthwise kernel (zero padding), then keep every `stride`-th row and column.

    (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)). The kernel is the loaded buffer `weight`
    (C, 1, k, k); the constructor's Gaussian is only a placeholder until a checkpoint is loaded.
    """

    def __init__(self, *, channels: int = 3, scale: float = 0.25):
        super().__init__()
        self.stride = round(1 / scale)
        self.register_buffer("weight", gaussian_kernel(channels=channels, sigma=(1 / scale - 1) / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.weight.shape[-1] // 2
        blurred = F.conv2d(F.pad(x, (pad, pad, pad, pad)), self.weight, groups=self.weight.shape[0])
        return blurred[:, :, :: self.stride, :: self.stride]


class KPHourglass(nn.Module):
    """2-D encoder, 1x1 conv to a 3-D volume, 3-D decoder (no skips): (B, 3, h, w) -> (B, 32, depth, h, w)."""

    def __init__(self, *, block_expansion: int = 32, in_channels: int = 3, reshape_channels: int = 16384,
                 reshape_depth: int = 16, num_blocks: int = 5, max_features: int = 1024):
        super().__init__()

        def width(level: int) -> int:
            return min(max_features, block_expansion * 2**level)

        self.down_blocks = nn.Sequential()
        for i in range(num_blocks):
            source = in_channels if i == 0 else width(i)
            self.down_blocks.add_module(f"down{i}", DownBlock2d(in_channels=source, out_channels=width(i + 1)))
        self.conv = nn.Conv2d(width(num_blocks), reshape_channels, kernel_size=1)
        self.up_blocks = nn.Sequential()
        for i in range(num_blocks):
            self.up_blocks.add_module(f"up{i}", UpBlock3d(in_channels=width(num_blocks - i),
                                                         out_channels=width(num_blocks - i - 1)))
        self.reshape_depth = reshape_depth
        self.out_channels = width(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.down_blocks(x))
        batch, channels, height, width = out.shape
        out = out.view(batch, channels // self.reshape_depth, self.reshape_depth, height, width)
        return self.up_blocks(out)


class KPDetector(nn.Module):
    """Image -> canonical keypoints.

    forward(image (B, 3, S, S) in [0, 1]) -> (B, num_kp, 3), (x, y, z) in the [-1, 1] volume coordinates: the
    expectation of a softmax (temperature 0.1) over the predicted (depth 16, S/4, S/4) heatmap of each keypoint.
    """

    def __init__(self, *, block_expansion: int = 32, num_kp: int = 15, image_channels: int = 3, max_features: int = 1024, reshape_channels: int = 16384,
                 reshape_depth: int = 16, num_blocks: int = 5, temperature: float = 0.1,
                 scale_factor: float = 0.25):
        super().__init__()
        self.predictor = KPHourglass(block_expansion=block_expansion, in_channels=image_channels,
                                     reshape_channels=reshape_channels, reshape_depth=reshape_depth,
                                     num_blocks=num_blocks, max_features=max_features)
        self.kp = nn.Conv3d(self.predictor.out_channels, num_kp, kernel_size=3, padding=1)
        self.temperature = temperature
        self.down = AntiAliasDownsample(channels=image_channels, scale=scale_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.kp(self.predictor(self.down(image)))
        batch, num_kp, depth, height, width = logits.shape
        heatmap = F.softmax(logits.reshape(batch, num_kp, -1, 1) / self.temperature, dim=2)
        grid = make_coordinate_grid(depth, height, width, dtype=heatmap.dtype, device=heatmap.device)
        # A reduction, not a matmul: float32 GEMM over 16*h*w positions loses about 1e-5 (cascade sum: 1e-7).
        return (heatmap * grid.reshape(1, 1, -1, 3)).sum(dim=2)
