"""Deep3DFaceRecon's coefficient regressor (`net_recon`): a ResNet-50 that maps an aligned face to 257 3DMM numbers.

Weight-compatible with the official `face_3drecon.*` tensors (prefix stripped): `backbone.*` is a torchvision-style
ResNet-50 v1.5 without its `fc`, `final_layers.0..6` are 1x1 convolutions, one per coefficient group.
Written without torchvision, which is optional in users' environments.
"""

from __future__ import annotations

import torch
from torch import nn

# Output width of each final layer, in the official order: id, exp, tex, angle, gamma (SH lighting), trans.
COEFFICIENT_GROUPS: tuple[tuple[str, int], ...] = (
    ("id", 80),
    ("exp", 64),
    ("tex", 80),
    ("angle", 3),
    ("gamma", 27),
    ("trans", 3),
)
NUM_COEFFICIENTS = sum(width for _, width in COEFFICIENT_GROUPS)  # 257
# Widths of `final_layers.0..6`; translation comes from two layers (x, y then z), concatenated in this order.
FINAL_LAYER_WIDTHS: tuple[int, ...] = (80, 64, 80, 3, 27, 2, 1)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels), plus a shortcut.

    (B, in_channels, H, W) -> (B, 4 * width, H / stride, W / stride).
    """

    expansion = 4

    def __init__(self, *, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet50Backbone(nn.Module):
    """ResNet-50 feature extractor: (B, 3, H, W) -> (B, 2048, 1, 1) after global average pooling (no `fc`)."""

    def __init__(self, *, blocks_per_layer: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (width, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_layer, strict=True), start=1):
            stride = 1 if index == 1 else 2
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(in_channels=in_channels, width=width, stride=stride if block == 0 else 1))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)


class ReconNet(nn.Module):
    """Face image -> 257 3DMM coefficients (id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3).

    Input: (B, 3, 224, 224) RGB in [0, 1] (an aligned face; no mean/std normalisation). Output: (B, 257).
    """

    def __init__(self, *, final_layer_widths: tuple[int, ...] = FINAL_LAYER_WIDTHS):
        super().__init__()
        self.backbone = ResNet50Backbone()
        self.final_layers = nn.ModuleList(
            nn.Conv2d(self.backbone.out_channels, width, kernel_size=1, bias=True) for width in final_layer_widths
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> pooled backbone feature (B, 2048)."""
        return torch.flatten(self.backbone(images), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(images)
        return torch.flatten(torch.cat([layer(pooled) for layer in self.final_layers], dim=1), 1)
