"""Building blocks shared by the face renderer's networks (keypoint detector, generator, dense motion).

Every block keeps the official attribute names (`conv`, `norm`, ...) so that state-dict keys match the released
checkpoints. BatchNorm layers are plain inference BatchNorm (eps 1e-5) with the stored running statistics.

Fast paths: a few layers have a faster way to compute the same expression on CPU (oneDNN), each a function
here with its own test against the plain expression: `modulate_instance_norm` (SPADE's normalisation folded
into its modulation, in place), `relu_conv3x3_of_upsampled` (a 3x3 conv of a nearest-upsampled map, phase by
phase) and `single_output_conv2d` (one output channel as a matrix product). Modules that use one have a
`fast_paths` attribute; `set_fast_paths(model, False)` makes the whole model run the plain, weight-compatible
reference forward instead (for other backends, and to check the fast paths).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(depth: int, height: int, width: int, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Identity sampling grid in [-1, 1]: (depth, height, width, 3), last axis (x, y, z) = (width, height, depth).

    Corners are exactly -1 and 1 (`2 * i / (n - 1) - 1`), the convention of the official keypoint math.
    """

    def axis(n: int) -> torch.Tensor:
        steps = torch.arange(n, dtype=dtype, device=device)
        return 2 * (steps / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class DownBlock2d(nn.Module):
    """conv3x3 + BatchNorm + ReLU + 2x2 average pool: (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class SameBlock2d(nn.Module):
    """conv3x3 + BatchNorm + ReLU (or LeakyReLU 0.01): (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, *, in_channels: int, out_channels: int, leaky: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.leaky = leaky

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        return F.leaky_relu(out, 0.01) if self.leaky else F.relu(out)


class DownBlock3d(nn.Module):
    """conv3x3x3 + BatchNorm3d + ReLU + (1, 2, 2) average pool: (B, in, D, H, W) -> (B, out, D, H/2, W/2)."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm(self.conv(x)))
        # avg_pool3d over (1, 2, 2) as a 2-D pool of the depth slices: the same four-value means, and the CPU has
        # a bfloat16 / float16 kernel for the 2-D pool only.
        batch, channels, depth, height, width = out.shape
        pooled = F.avg_pool2d(out.reshape(batch, channels * depth, height, width), kernel_size=2)
        return pooled.view(batch, channels, depth, height // 2, width // 2)


class UpBlock3d(nn.Module):
    """Nearest upsample x(1, 2, 2) + conv3x3x3 + BatchNorm3d + ReLU: (B, in, D, H, W) -> (B, out, D, 2H, 2W)."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block, x + conv2(relu(bn2(conv1(relu(bn1(x)))))): (B, C, D, H, W) -> same."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is spectrally normalised with stored vectors, as saved by `torch.nn.utils.spectral_norm`.

    State-dict entries: `weight_orig` (out, in, k, k), `weight_u` (out,), `weight_v` (in*k*k,), `bias` (out,) if
    any. Effective weight = weight_orig / sigma, sigma = u . (weight_orig.reshape(out, -1) @ v), with the stored u
    and v as they are (inference: no power iteration, no renormalisation).
    """

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.padding = kernel_size // 2
        self.folded = False  # see fold_
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = in_channels * kernel_size * kernel_size
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0))
        self.register_buffer("weight_v", F.normalize(torch.randn(fan_in), dim=0))
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))

    def effective_weight(self) -> torch.Tensor:
        """weight_orig / sigma, (out, in, k, k), in the weights' dtype; sigma is computed in float32 at least (a
        half-precision sigma would scale the whole layer's output wrongly)."""
        weight = self.weight_orig
        if weight.dtype in (torch.float16, torch.bfloat16):
            weight = weight.float()
        matrix = weight.reshape(weight.shape[0], -1)
        sigma = torch.dot(self.weight_u.to(weight.dtype), torch.mv(matrix, self.weight_v.to(weight.dtype)))
        return (weight / sigma).to(self.weight_orig.dtype)

    def fold_(self) -> "SpectralNormConv2d":
        """For inference: store the effective weight in `weight_orig`, so that no call normalises it again.

        The stored u and v then give sigma = 1 (to rounding), so the state dict still describes the same layer.
        Loading a state dict unfolds. Returns self."""
        with torch.no_grad():
            self.weight_orig.copy_(self.effective_weight())
        self.folded = True
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self.folded = False
        super()._load_from_state_dict(*args, **kwargs)

    def current_weight(self) -> torch.Tensor:
        """The weight a forward convolves with."""
        return self.weight_orig if self.folded else self.effective_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.current_weight(), self.bias, padding=self.padding)


def fold_spectral_norms(model: nn.Module) -> nn.Module:
    """`SpectralNormConv2d.fold_` every such layer of `model` (in place); returns `model`."""
    for module in model.modules():
        if isinstance(module, SpectralNormConv2d):
            module.fold_()
    return model


def set_fast_paths(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every fast path in `model` on or off (see the module docstring); returns `model`."""
    for module in model.modules():
        if hasattr(module, "fast_paths"):
            module.fast_paths = enabled
    return model


def instance_norm_modulation(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The plain expression: instance_norm(x) * (1 + gamma) + beta (biased variance, eps 1e-5)."""
    return F.instance_norm(x, eps=1e-5) * (1 + gamma) + beta


def modulate_instance_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """Fast path of `instance_norm_modulation`, overwriting gamma and beta (returned as the result); beta None:
    the scaled part alone, instance_norm(x) * (1 + gamma).

    float32: (x - mean) * ((1 + gamma) / std) + beta makes one fresh full-size tensor (x - mean) instead of four,
    with two-pass statistics (as accurate as instance_norm's). Half precision: the batch-norm kernel normalises
    (its statistics accumulate in float32 without a float32 copy of x, which at 256 pixels costs more than the
    normalisation itself); one image's batch statistics are its instance statistics.
    """
    if x.dtype in (torch.bfloat16, torch.float16):
        normalized = F.batch_norm(x, None, None, training=True, eps=1e-5) if x.shape[0] == 1 \
            else F.instance_norm(x, eps=1e-5)
        return normalized.mul_(gamma.add_(1)) if beta is None else beta.addcmul_(normalized, gamma.add_(1))
    mean = x.mean(dim=(2, 3), keepdim=True, dtype=torch.float32)
    centered = x - mean.to(x.dtype)
    inv_std = torch.rsqrt(centered.square().mean(dim=(2, 3), keepdim=True, dtype=torch.float32) + 1e-5)
    scale = gamma.add_(1).mul_(inv_std.to(gamma.dtype))
    return centered.mul_(scale) if beta is None else beta.addcmul_(centered, scale)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: instance_norm(x) * (1 + gamma(seg)) + beta(seg).

    x: (B, channels, H, W); seg: (B, label_channels, h, w), resized to (H, W) by nearest neighbour. The work is
    split in two so that a decoder can compute the hidden map more cheaply: hidden = relu(mlp_shared(seg)), then
    `modulate(x, hidden)`.
    """

    fast_paths = True

    def __init__(self, *, channels: int, label_channels: int = 256, hidden: int = 128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)

    def hidden(self, seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """relu(mlp_shared(seg resized to size)): (B, label_channels, h, w) -> (B, hidden, *size)."""
        if tuple(seg.shape[2:]) != tuple(size):
            seg = F.interpolate(seg, size=size, mode="nearest")
        return self.mlp_shared(seg)

    def modulate(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W), hidden (B, hidden, H, W) -> (B, channels, H, W)."""
        combine = modulate_instance_norm if self.fast_paths else instance_norm_modulation
        return combine(x, self.mlp_gamma(hidden), self.mlp_beta(hidden))

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.modulate(x, self.hidden(seg, x.shape[2:]))


class SPADEResBlock(nn.Module):
    """SPADE residual block (spectral-norm convs, LeakyReLU 0.2): (B, fin, H, W), seg -> (B, fout, H, W).

    Fast path of the learned shortcut conv_s(norm_s(x)): conv_s is a 1x1 convolution without bias, so its share of
    norm_s's beta, conv_s(mlp_beta(hidden)), is one 3x3 convolution of the hidden map with the composed weight
    conv_s . mlp_beta: fout instead of fin output channels (a quarter of that convolution in both upsampling
    blocks), and no fin-channel beta map.
    """

    fast_paths = True

    def __init__(self, *, in_channels: int, out_channels: int, label_channels: int = 256):
        super().__init__()
        middle = min(in_channels, out_channels)
        self.learned_shortcut = in_channels != out_channels
        self.conv_0 = SpectralNormConv2d(in_channels=in_channels, out_channels=middle, kernel_size=3)
        self.conv_1 = SpectralNormConv2d(in_channels=middle, out_channels=out_channels, kernel_size=3)
        self.norm_0 = SPADE(channels=in_channels, label_channels=label_channels)
        self.norm_1 = SPADE(channels=middle, label_channels=label_channels)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1,
                                             bias=False)
            self.norm_s = SPADE(channels=in_channels, label_channels=label_channels)

    def spade_layers(self) -> list[SPADE]:
        """The block's SPADE layers in the order `forward_hidden` takes their hidden maps."""
        return [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.forward_hidden(x, [layer.hidden(seg, x.shape[2:]) for layer in self.spade_layers()])

    def forward_hidden(self, x: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Same as forward, given each SPADE layer's hidden map (B, 128, H, W) (see `spade_layers`)."""
        shortcut = self._learned_shortcut(x, hidden[2]) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu_(self.norm_0.modulate(x, hidden[0]), 0.2))
        dx = self.conv_1(F.leaky_relu_(self.norm_1.modulate(dx, hidden[1]), 0.2))
        return dx.add_(shortcut)

    def _learned_shortcut(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if not self.fast_paths:
            return self.conv_s(self.norm_s.modulate(x, hidden))
        beta_conv = self.norm_s.mlp_beta
        mix = self.conv_s.current_weight().float()[:, :, 0, 0]  # (fout, fin)
        weight = torch.einsum("oc,cikl->oikl", mix, beta_conv.weight.float()).to(hidden.dtype)
        bias = (mix @ beta_conv.bias.float()).to(hidden.dtype)
        scaled = modulate_instance_norm(x, self.norm_s.mlp_gamma(hidden), None)
        return self.conv_s(scaled).add_(F.conv2d(hidden, weight, bias, padding=1))


def _tap_patterns(scale: int) -> tuple[list[tuple[int, tuple[int, ...]]], list[int]]:
    """How a 3-tap kernel along an axis upsampled `scale` times (nearest) reads the original axis.

    Output position scale*i + a reads original positions i + (a + t) // scale for the taps t = -1, 0, 1: at most
    two neighbours, (i + start - 1, i + start). Returns the distinct (start, position of each tap) patterns and,
    for each phase a, the index of its pattern.
    """
    patterns: list[tuple[int, tuple[int, ...]]] = []
    phase_pattern = []
    for phase in range(scale):
        positions = tuple((phase + tap) // scale for tap in (-1, 0, 1))
        pattern = (1 if min(positions) == 0 else 0, positions)
        if pattern not in patterns:
            patterns.append(pattern)
        phase_pattern.append(patterns.index(pattern))
    return patterns, phase_pattern


def _two_tap_kernel(weight: torch.Tensor, pattern: tuple[int, tuple[int, ...]], dim: int) -> torch.Tensor:
    """Sum the 3 taps of `weight` along `dim` into the 2 window positions of `pattern`."""
    start, positions = pattern
    taps = []
    for position in (start - 1, start):
        chosen = torch.tensor([t for t, p in enumerate(positions) if p == position], dtype=torch.long,
                              device=weight.device)
        taps.append(weight.index_select(dim, chosen).sum(dim, keepdim=True))
    return torch.cat(taps, dim)


def relu_conv3x3_of_upsampled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: int, *,
                              groups: int = 1) -> list[torch.Tensor]:
    """relu(conv3x3 pad 1 (nearest_upsample(x, scale))) without upsampling x: (B, Cin, h, w) -> `groups` maps
    (B, Cout / groups, s*h, s*w) (consecutive output channels), in channels-last memory layout.

    scale >= 2. A 3x3 window on a nearest-upsampled map covers at most 2x2 original pixels, so each output phase
    (a, b) = (row % scale, col % scale) is a 2x2 convolution of x with the 3x3 taps summed accordingly: 2.25x (scale
    2) to 4x (scale 4) fewer multiply-adds. Phases with the same tap pattern share a kernel; all kernels run as one
    convolution, whose (h+1, w+1) outputs are then interleaved.
    """
    patterns, phase_pattern = _tap_patterns(scale)
    weight = weight.float()  # the taps are summed in float32 (then rounded once) whatever x's dtype
    kernels, origins = [], {}
    for row, row_pattern in enumerate(patterns):
        row_kernel = _two_tap_kernel(weight, row_pattern, 2)
        for col, col_pattern in enumerate(patterns):
            origins[row, col] = (len(kernels), row_pattern[0], col_pattern[0])
            kernels.append(_two_tap_kernel(row_kernel, col_pattern, 3))
    x = x.contiguous(memory_format=torch.channels_last)
    phases = F.relu_(F.conv2d(x, torch.cat(kernels).to(x.dtype), bias.to(x.dtype).repeat(len(kernels)), padding=1))
    batch, _, height, width = x.shape
    channels = weight.shape[0] // groups
    maps = []
    for group in range(groups):
        out = torch.empty(batch, channels, height * scale, width * scale, dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        # The same storage as (B, C, h, a, w, b): row = h * scale + a, column = w * scale + b.
        row_stride, col_stride = out.stride(2), out.stride(3)
        by_phase = out.as_strided((batch, channels, height, scale, width, scale),
                                  (out.stride(0), out.stride(1), row_stride * scale, row_stride, col_stride * scale,
                                   col_stride))
        for a in range(scale):
            for b in range(scale):
                kernel, row_start, col_start = origins[phase_pattern[a], phase_pattern[b]]
                first = (kernel * groups + group) * channels
                by_phase[:, :, :, a, :, b] = phases[:, first:first + channels, row_start:row_start + height,
                                                    col_start:col_start + width]
        maps.append(out)
    return maps
