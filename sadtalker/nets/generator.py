"""Face renderer generator (face-vid2vid OcclusionAwareSPADEGenerator as configured by SadTalker).

State-dict keys = the official `generator.*` keys with the prefix stripped. The work is split so that a video
encodes its source image once: `encode_source` (image -> 3-D appearance volume) and `animate` (volume + source
and driving keypoints -> frame).

Precision: `set_compute_dtype(bfloat16 or float16)` moves only the per-frame convolution stacks (dense-motion
hourglass and its mask / occlusion heads, `third`, `fourth`, the SPADE decoder) to half precision. Everything
that is a coordinate or a probability stays float32: the source encoder (run once), keypoints, Gaussian heatmaps,
the motion fields and their softmax blend, both grid_sample warps, and the final sigmoid. Each part casts its
input to its own weights' dtype, so any mix runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    DownBlock2d,
    DownBlock3d,
    ResBlock3d,
    SameBlock2d,
    SPADEResBlock,
    UpBlock3d,
    make_coordinate_grid,
    relu_conv3x3_of_upsampled,
)

KP_VARIANCE = 0.01
MASK_FLOOR = 1e-3
# The parts that `set_compute_dtype` moves to half precision (attribute paths from the generator).
HALF_PRECISION_PARTS = ("dense_motion_network.hourglass", "dense_motion_network.mask",
                        "dense_motion_network.occlusion", "third", "fourth", "decoder")


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first parameter (what its input is cast to)."""
    return next(module.parameters()).dtype


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """exp(-|grid - kp|^2 / (2 * 0.01)) per keypoint: kp (B, K, 3), grid (D, H, W, 3) -> (B, K, D, H, W)."""
    offsets = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * offsets.square().sum(-1) / KP_VARIANCE)


def sample_volume(volume: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """Trilinear sampling (zero padding, align_corners=False) of one volume per source row at many grids.

    volume (F, C, D, H, W); grids (N, G, D', H', W', 3) with N a multiple of F (frame n uses volume n // (N / F)),
    last axis (x, y, z) in [-1, 1]. Returns (N, G, C, D', H', W'). The grids are stacked along the sampled depth
    so that one grid_sample call serves every frame without copying the volume per grid.
    """
    frames, groups, depth, height, width, _ = grids.shape
    sources = volume.shape[0]
    per_source = frames // sources
    stacked = grids.reshape(sources, per_source * groups * depth, height, width, 3)
    sampled = F.grid_sample(volume, stacked, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(sources, -1, per_source, groups, depth, height, width)
    return sampled.permute(0, 2, 3, 1, 4, 5, 6).reshape(frames, groups, -1, depth, height, width)


def single_output_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv2d (k x k, zero padding k // 2) with ONE output channel: (B, C, H, W), (1, C, k, k) -> (B, 1, H, W).

    oneDNN runs single-output convolutions far below its peak; contracting the channels first as one matrix
    product (taps x C) @ (C x H*W) and then adding the k*k shifted tap maps is several times faster.
    """
    batch, channels, height, width = x.shape
    size = weight.shape[-1]
    pad = size // 2
    taps = weight[0].permute(1, 2, 0).reshape(size * size, channels) @ x.reshape(batch, channels, height * width)
    taps = F.pad(taps.view(batch, size, size, height, width), (pad, pad, pad, pad))
    out = bias.view(1, 1, 1).expand(batch, height, width).clone()
    for row in range(size):
        for col in range(size):
            out += taps[:, row, col, row:row + height, col:col + width]
    return out.unsqueeze(1)


class Hourglass3d(nn.Module):
    """U-Net over (B, C, D, H, W) volumes, pooling H and W only; output = in_channels + block_expansion channels."""

    def __init__(self, *, block_expansion: int, in_channels: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = _HourglassEncoder(block_expansion=block_expansion, in_channels=in_channels,
                                         num_blocks=num_blocks, max_features=max_features)
        self.decoder = _HourglassDecoder(block_expansion=block_expansion, in_channels=in_channels,
                                         num_blocks=num_blocks, max_features=max_features)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class _HourglassEncoder(nn.Module):
    def __init__(self, *, block_expansion: int, in_channels: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(in_channels=in_channels if i == 0 else min(max_features, block_expansion * 2**i),
                        out_channels=min(max_features, block_expansion * 2 ** (i + 1)))
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = [x]
        for block in self.down_blocks:
            outputs.append(block(outputs[-1]))
        return outputs


class _HourglassDecoder(nn.Module):
    def __init__(self, *, block_expansion: int, in_channels: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            # Every block after the first also receives the skip of the same width (concatenated).
            factor = 1 if i == num_blocks - 1 else 2
            blocks.append(UpBlock3d(in_channels=factor * min(max_features, block_expansion * 2 ** (i + 1)),
                                    out_channels=min(max_features, block_expansion * 2**i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels = block_expansion + in_channels
        self.conv = nn.Conv3d(self.out_channels, self.out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_channels)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class DenseMotionNetwork(nn.Module):
    """Keypoints + appearance volume -> dense backward deformation and occlusion map.

    forward(feature_3d (F, 32, D, h, w), kp_source (N, K, 3), kp_driving (N, K, 3)), N a multiple of F ->
    dict `deformation` (N, D, h, w, 3) sampling grid, `occlusion_map` (N, 1, h, w) in (0, 1),
    `mask` (N, K + 1, D, h, w) softmax weights before the 1e-3 floor.
    """

    fast_paths = True

    def __init__(self, *, block_expansion: int = 32, num_blocks: int = 5, max_features: int = 1024,
                 num_kp: int = 15, feature_channels: int = 32, reshape_depth: int = 16, compress: int = 4):
        super().__init__()
        self.hourglass = Hourglass3d(block_expansion=block_expansion, in_channels=(num_kp + 1) * (compress + 1),
                                     num_blocks=num_blocks, max_features=max_features)
        self.mask = nn.Conv3d(self.hourglass.out_channels, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channels, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels * reshape_depth, 1, kernel_size=7, padding=3)

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor,
                kp_driving: torch.Tensor) -> dict[str, torch.Tensor]:
        compressed = F.relu(self.norm(self.compress(feature_3d.to(weight_dtype(self.compress)))))
        kp_source, kp_driving = kp_source.to(compressed.dtype), kp_driving.to(compressed.dtype)
        frames = kp_driving.shape[0]
        _, _, depth, height, width = compressed.shape
        grid = make_coordinate_grid(depth, height, width, dtype=compressed.dtype, device=compressed.device)

        # Motion k maps a driving-frame point near driving kp k to the same offset from source kp k; motion 0 is
        # the identity (background).
        keypoint_motions = (grid[None, None] - kp_driving[:, :, None, None, None, :]
                            + kp_source[:, :, None, None, None, :])
        motions = torch.cat([grid.expand(frames, 1, depth, height, width, 3), keypoint_motions], dim=1)
        deformed = sample_volume(compressed, motions)  # (N, K+1, c, D, h, w)

        heatmaps = keypoint_gaussians(kp_driving, grid) - keypoint_gaussians(kp_source, grid)
        heatmaps = F.pad(heatmaps, (0, 0, 0, 0, 0, 0, 1, 0))  # zero map for the background motion
        motion_input = torch.cat([heatmaps.unsqueeze(2), deformed], dim=2).flatten(1, 2)

        prediction = self.hourglass(motion_input.to(weight_dtype(self.hourglass)))
        mask = F.softmax(self.mask(prediction.to(weight_dtype(self.mask))).to(motions.dtype), dim=1)
        floored = torch.where(mask < MASK_FLOOR, torch.zeros_like(mask), mask)
        deformation = (motions * floored.unsqueeze(-1)).sum(dim=1)
        occlusion_input = prediction.flatten(1, 2).to(weight_dtype(self.occlusion))
        if self.fast_paths:
            occlusion_logits = single_output_conv2d(occlusion_input, self.occlusion.weight, self.occlusion.bias)
        else:
            occlusion_logits = self.occlusion(occlusion_input)
        occlusion_map = torch.sigmoid(occlusion_logits.to(motions.dtype))
        return {"deformation": deformation, "occlusion_map": occlusion_map, "mask": mask}


class SPADEDecoder(nn.Module):
    """Warped features (B, 256, h, w) -> RGB logits (B, 3, 4h, 4w); the input is also the SPADE segmentation map."""

    fast_paths = True

    def __init__(self, *, in_channels: int = 256, out_channels: int = 64, num_middle: int = 6):
        super().__init__()
        wide = 2 * in_channels
        self.fc = nn.Conv2d(in_channels, wide, kernel_size=3, padding=1)
        for i in range(num_middle):
            self.add_module(f"G_middle_{i}", SPADEResBlock(in_channels=wide, out_channels=wide,
                                                           label_channels=in_channels))
        self.up_0 = SPADEResBlock(in_channels=wide, out_channels=in_channels, label_channels=in_channels)
        self.up_1 = SPADEResBlock(in_channels=in_channels, out_channels=out_channels, label_channels=in_channels)
        self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)
        self.num_middle = num_middle

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        x = self.fc(seg)
        for i in range(self.num_middle):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        if not self.fast_paths:
            x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
            x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
            return self.conv_img(F.leaky_relu(x, 0.2))
        # Channels-last from here: oneDNN runs the 128- and 256-pixel convolutions faster so (not the 64-pixel
        # ones above), and the phase interleaving of `relu_conv3x3_of_upsampled` then copies whole pixels.
        x = x.contiguous(memory_format=torch.channels_last)
        x = self._upsampled_block(self.up_0, F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        x = self._upsampled_block(self.up_1, F.interpolate(x, scale_factor=2.0, mode="nearest"), seg)
        return self.conv_img(F.leaky_relu_(x, 0.2)).contiguous()

    @staticmethod
    def _upsampled_block(block: SPADEResBlock, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """block(x, seg) where x is larger than seg by an integer factor: the SPADE hidden maps of all the block's
        layers come from one phase-decomposed convolution of seg (no upsampled copy of seg)."""
        scale = x.shape[-1] // seg.shape[-1]
        if x.shape[-2:] != (seg.shape[-2] * scale, seg.shape[-1] * scale) or scale < 2:
            return block(x, seg)
        layers = block.spade_layers()
        weight = torch.cat([layer.mlp_shared[0].weight for layer in layers])
        bias = torch.cat([layer.mlp_shared[0].bias for layer in layers])
        return block.forward_hidden(x, relu_conv3x3_of_upsampled(seg, weight, bias, scale, groups=len(layers)))


class OcclusionAwareSPADEGenerator(nn.Module):
    """Source image + source/driving keypoints -> rendered frame.

    encode_source(image (F, 3, S, S) in [0, 1]) -> feature_3d (F, 32, 16, S/4, S/4);
    animate(feature_3d, kp_source (N, 15, 3), kp_driving (N, 15, 3)) -> prediction (N, 3, S, S) in (0, 1),
    where N is a multiple of F (each source row drives N / F consecutive frames; F = 1 renders N frames of one
    source without copying its volume). forward(image, kp_source, kp_driving) = both, F = N.
    """

    def __init__(self, *, image_channels: int = 3, num_kp: int = 15, block_expansion: int = 64,
                 max_features: int = 512, num_down_blocks: int = 2, reshape_channels: int = 32,
                 reshape_depth: int = 16, num_resblocks: int = 6):
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, feature_channels=reshape_channels,
                                                       reshape_depth=reshape_depth)
        self.first = SameBlock2d(in_channels=image_channels, out_channels=block_expansion)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_channels=min(max_features, block_expansion * 2**i),
                        out_channels=min(max_features, block_expansion * 2 ** (i + 1)))
            for i in range(num_down_blocks))
        encoded = min(max_features, block_expansion * 2**num_down_blocks)
        self.second = nn.Conv2d(encoded, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(channels=reshape_channels))
        self.third = SameBlock2d(in_channels=max_features, out_channels=encoded, leaky=True)
        self.fourth = nn.Conv2d(encoded, encoded, kernel_size=1)
        self.decoder = SPADEDecoder(in_channels=encoded)
        self.reshape_channels = reshape_channels
        self.reshape_depth = reshape_depth

    def set_compute_dtype(self, dtype: torch.dtype, parts: tuple[str, ...] = HALF_PRECISION_PARTS
                          ) -> "OcclusionAwareSPADEGenerator":
        """Cast `parts` (see HALF_PRECISION_PARTS) to `dtype` and every other part to float32 (or keep float64);
        returns self. float32 everywhere is the golden-exact reference."""
        floating = torch.float64 if weight_dtype(self) == torch.float64 else torch.float32
        self.to(floating)
        for path in parts:
            self.get_submodule(path).to(dtype)
        return self

    def encode_source(self, source_image: torch.Tensor) -> torch.Tensor:
        """(F, 3, S, S) in [0, 1] -> appearance volume feature_3d (F, 32, 16, S/4, S/4), in the encoder's dtype."""
        out = self.first(source_image.to(weight_dtype(self.first)))
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        batch, _, height, width = out.shape
        return self.resblocks_3d(out.view(batch, self.reshape_channels, self.reshape_depth, height, width))

    def animate(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor, *,
                return_intermediates: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """feature_3d (F, 32, 16, h, w), kp_source / kp_driving (N, 15, 3) -> prediction (N, 3, 4h, 4w) in the
        coordinate dtype (that of dense_motion_network.compress: float32 unless the model is float64).

        With return_intermediates, a dict instead: `prediction`, `logits` (before the sigmoid), `deformation`
        (N, 16, h, w, 3), `occlusion_map` (N, 1, h, w), `mask` (N, 16, 16, h, w), `decoder_input` (N, 256, h, w).
        """
        frames = kp_driving.shape[0]
        if frames % feature_3d.shape[0] or kp_source.shape[0] != frames:
            raise ValueError(f"{frames} driving keypoint sets need kp_source with as many rows and a feature_3d batch "
                             f"dividing it; got kp_source {tuple(kp_source.shape)}, feature_3d "
                             f"{tuple(feature_3d.shape)}")
        motion = self.dense_motion_network(feature_3d, kp_source, kp_driving)
        deformation = motion["deformation"]
        warped = sample_volume(feature_3d.to(deformation.dtype), deformation.unsqueeze(1)).reshape(
            frames, -1, *feature_3d.shape[-2:])
        features = self.third(warped.to(weight_dtype(self.third)))
        features = self.fourth(features.to(weight_dtype(self.fourth)))
        decoder_input = features.mul_(motion["occlusion_map"].to(features.dtype))
        logits = self.decoder(decoder_input.to(weight_dtype(self.decoder))).to(deformation.dtype)
        prediction = torch.sigmoid(logits)
        if not return_intermediates:
            return prediction
        return {"prediction": prediction, "logits": logits, "decoder_input": decoder_input, **motion}

    def forward(self, source_image: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S), (N, 15, 3), (N, 15, 3) -> prediction (N, 3, S, S) in (0, 1)."""
        return self.animate(self.encode_source(source_image), kp_source, kp_driving)
