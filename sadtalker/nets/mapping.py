"""MappingNet: a 27-frame window of 3DMM coefficients -> head pose bins, translation and keypoint offsets.

State-dict keys = the official `mapping_*-model.pth.tar['mapping']` keys. coeff_channels is 70 (crop / extcrop /
resize: exp 64 + pose 6) or 73 (full / extfull: + the crop triple). Constructor names follow the official yaml.
"""

from __future__ import annotations

import torch
from torch import nn


class MappingNet(nn.Module):
    """forward(coeff_windows (B, coeff_nc, 27)) -> dict of
    `yaw`, `pitch`, `roll` (B, 66) bin logits, `t` (B, 3) translation, `exp` (B, 45) = 15 keypoint offsets x 3.
    """

    def __init__(self, *, coeff_nc: int = 70, descriptor_nc: int = 1024, layer: int = 3, num_kp: int = 15,
                 num_bins: int = 66):
        super().__init__()
        self.first = nn.Sequential(nn.Conv1d(coeff_nc, descriptor_nc, kernel_size=7))
        for i in range(layer):
            # Dilated conv without padding shortens the sequence by 6; the residual is cropped to match.
            encoder = nn.Sequential(nn.LeakyReLU(0.1),
                                    nn.Conv1d(descriptor_nc, descriptor_nc, kernel_size=3, dilation=3))
            self.add_module(f"encoder{i}", encoder)
        self.layers = layer
        self.fc_roll = nn.Linear(descriptor_nc, num_bins)
        self.fc_pitch = nn.Linear(descriptor_nc, num_bins)
        self.fc_yaw = nn.Linear(descriptor_nc, num_bins)
        self.fc_t = nn.Linear(descriptor_nc, 3)
        self.fc_exp = nn.Linear(descriptor_nc, 3 * num_kp)

    def forward(self, coeff_windows: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.first(coeff_windows)
        for i in range(self.layers):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]
        descriptor = out.mean(dim=2)
        return {"yaw": self.fc_yaw(descriptor), "pitch": self.fc_pitch(descriptor), "roll": self.fc_roll(descriptor),
                "t": self.fc_t(descriptor), "exp": self.fc_exp(descriptor)}
