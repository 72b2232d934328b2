"""Audio2Pose (PoseVAE): head-pose motion for 32-frame windows from audio, a style class and a latent z.

State-dict keys = the official `audio2pose.*` keys without the prefix:
`audio_encoder.audio_encoder.<0..12>.conv_block.*`, `netG.decoder.*` (used at inference),
`netG.encoder.*` and `netD_motion.*` (training only; held so official files load with strict=True).
A pose is 6 values: angles (pitch, yaw, roll; radians) then translation (x, y, z).
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import pairwise

import torch
from torch import nn

from .audio_encoder import FEATURE_SIZE, AudioEncoder

POSE_SIZE = 6
SEQ_LEN = 32
LATENT_SIZE = 64
NUM_STYLES = 46


class ResidualConv(nn.Module):
    """[BN, ReLU, Conv k3 (stride), BN, ReLU, Conv k3] + [Conv k3 (stride), BN]."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int | tuple[int, int]):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        self.conv_skip = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class Upsample(nn.Module):
    """Transposed conv that doubles the time axis only."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """U-Net over a (B, 1, time, 6) map, downsampling time only: (B, 1, 32, 6) -> (B, 1, 32, 6) in (0, 1)."""

    def __init__(self, *, channels: int = 1, filters: tuple[int, int, int, int] = (32, 64, 128, 256)):
        super().__init__()
        f0, f1, f2, f3 = filters
        time_only = (2, 1)
        self.input_layer = nn.Sequential(
            nn.Conv2d(channels, f0, 3, padding=1),
            nn.BatchNorm2d(f0),
            nn.ReLU(),
            nn.Conv2d(f0, f0, 3, padding=1),
        )
        self.input_skip = nn.Sequential(nn.Conv2d(channels, f0, 3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, stride=time_only)
        self.residual_conv_2 = ResidualConv(f1, f2, stride=time_only)
        self.bridge = ResidualConv(f2, f3, stride=time_only)
        self.upsample_1 = Upsample(f3, f3, kernel=time_only, stride=time_only)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, stride=1)
        self.upsample_2 = Upsample(f2, f2, kernel=time_only, stride=time_only)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, stride=1)
        self.upsample_3 = Upsample(f1, f1, kernel=time_only, stride=time_only)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, stride=1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, 1, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level1 = self.input_layer(x) + self.input_skip(x)
        level2 = self.residual_conv_1(level1)
        level3 = self.residual_conv_2(level2)
        bottom = self.bridge(level3)
        up = self.up_residual_conv1(torch.cat([self.upsample_1(bottom), level3], 1))
        up = self.up_residual_conv2(torch.cat([self.upsample_2(up), level2], 1))
        up = self.up_residual_conv3(torch.cat([self.upsample_3(up), level1], 1))
        return self.output_layer(up)


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers `L<i>`, ReLU between them, Sigmoid after the last."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers[f"L{i}"] = nn.Linear(n_in, n_out)
        layers[f"A{i}"] = nn.ReLU() if i + 2 < len(sizes) else nn.Sigmoid()
    return nn.Sequential(layers)


class PoseDecoder(nn.Module):
    """CVAE decoder: (reference pose, z + style bias, per-frame audio) -> motion for one 32-frame window."""

    def __init__(self, *, seq_len: int = SEQ_LEN, latent_size: int = LATENT_SIZE, num_styles: int = NUM_STYLES,
                 audio_size: int = FEATURE_SIZE, pose_size: int = POSE_SIZE, hidden_size: int = 128):
        super().__init__()
        self.seq_len = seq_len
        self.pose_size = pose_size
        self.classbias = nn.Parameter(torch.zeros(num_styles, latent_size))
        self.resunet = ResUnet()
        self.MLP = _mlp([pose_size + latent_size + seq_len * pose_size, hidden_size, seq_len * pose_size])
        self.pose_linear = nn.Linear(pose_size, pose_size)
        self.linear_audio = nn.Linear(audio_size, pose_size)

    def forward(self, ref_pose: torch.Tensor, z: torch.Tensor, style: torch.Tensor,
                audio_emb: torch.Tensor) -> torch.Tensor:
        """ref_pose (B, 6), z (B, 64), style (B,) long in [0, 46), audio_emb (B, 32, 512) -> motion (B, 32, 6)."""
        batch = len(ref_pose)
        audio = self.linear_audio(audio_emb).reshape(batch, -1)
        x = torch.cat([ref_pose, z + self.classbias[style], audio], -1)
        motion_map = self.MLP(x).reshape(batch, 1, self.seq_len, self.pose_size)
        return self.pose_linear(self.resunet(motion_map).squeeze(1))


class PoseEncoder(nn.Module):
    """CVAE encoder, used only in training. Holds the official parameters; has no inference use."""

    def __init__(self, *, latent_size: int = LATENT_SIZE, num_styles: int = NUM_STYLES, audio_size: int = FEATURE_SIZE,
                 pose_size: int = POSE_SIZE, input_size: int = 454, hidden_size: int = 128):
        super().__init__()
        self.classbias = nn.Parameter(torch.zeros(num_styles, latent_size))
        self.resunet = ResUnet()
        self.MLP = nn.Sequential(OrderedDict(L0=nn.Linear(input_size, hidden_size), A0=nn.ReLU()))
        self.linear_means = nn.Linear(hidden_size, latent_size)
        self.linear_logvar = nn.Linear(hidden_size, latent_size)
        self.linear_audio = nn.Linear(audio_size, pose_size)


class PoseCVAE(nn.Module):
    """`netG`: the encoder (training only) and the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = PoseEncoder()
        self.decoder = PoseDecoder()


class _ConvNorm1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)


class MotionDiscriminator(nn.Module):
    """`netD_motion`, the training-time motion discriminator: parameters only, no inference use."""

    def __init__(self, *, pose_size: int = POSE_SIZE):
        super().__init__()
        self.seq = nn.Sequential(
            _ConvNorm1d(pose_size, 256, 4),
            _ConvNorm1d(256, 512, 4),
            _ConvNorm1d(512, 1024, 3),
            nn.Conv1d(1024, 1, 3),
        )


class _WindowAudioEncoder(nn.Module):
    """Wraps the shared encoder under the official key path `audio_encoder.audio_encoder.*`."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = AudioEncoder()


class Audio2Pose(nn.Module):
    """PoseVAE at inference: `encode_audio` then `decode` for each 32-frame window."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = _WindowAudioEncoder()
        self.netG = PoseCVAE()
        self.netD_motion = MotionDiscriminator()

    @property
    def seq_len(self) -> int:
        return self.netG.decoder.seq_len

    @property
    def latent_size(self) -> int:
        return self.netG.decoder.classbias.shape[1]

    @property
    def num_styles(self) -> int:
        return self.netG.decoder.classbias.shape[0]

    def drop_training_parts(self) -> "Audio2Pose":
        """Free the CVAE encoder and the motion discriminator (about 20 MB in float32), which inference never
        runs; the state dict then no longer matches the official file, so do it only after loading. Returns self."""
        self.netG.encoder = None
        self.netD_motion = None
        return self

    def encode_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """Mel windows (T, 1, 80, 16) or (B, T, 1, 80, 16) -> embeddings (B, T, 512) (B = 1 for 4-D input)."""
        if windows.dim() == 4:
            windows = windows.unsqueeze(0)
        batch, frames = windows.shape[:2]
        features = self.audio_encoder.audio_encoder(windows.reshape(batch * frames, *windows.shape[2:]))
        return features.reshape(batch, frames, -1)

    def decode(self, ref_pose: torch.Tensor, z: torch.Tensor, style: torch.Tensor,
               audio_emb: torch.Tensor) -> torch.Tensor:
        """ref_pose (B, 6), z (B, 64), style (B,) long, audio_emb (B, 32, 512) -> motion (B, 32, 6) (pose - ref)."""
        return self.netG.decoder(ref_pose, z, style, audio_emb)

    def forward(self, ref_pose: torch.Tensor, z: torch.Tensor, style: torch.Tensor,
                windows: torch.Tensor) -> torch.Tensor:
        """One window each: ref_pose (B, 6), z (B, 64), style (B,), windows (B, 32, 1, 80, 16) -> (B, 32, 6)."""
        return self.decode(ref_pose, z, style, self.encode_audio(windows))
