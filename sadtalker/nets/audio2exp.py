"""Audio2Exp (ExpNet): per-frame 3DMM expression from the frame's mel window, the reference expression and the
blink ratio.

State-dict keys = the official `audio2exp.*` keys without the prefix: `audio_encoder.<0..12>.conv_block.*`,
`mapping1.{weight,bias}`.
"""

from __future__ import annotations

import torch
from torch import nn

from .audio_encoder import FEATURE_SIZE, AudioEncoder

EXPRESSION_SIZE = 64


class Audio2Exp(nn.Module):
    """Expression = Linear(577 -> 64) of [audio feature 512 | reference expression 64 | blink ratio 1].

    The output is the expression itself (no residual to the reference). Frames are independent.
    """

    def __init__(self, *, expression_size: int = EXPRESSION_SIZE):
        super().__init__()
        self.audio_encoder = AudioEncoder()
        self.mapping1 = nn.Linear(FEATURE_SIZE + expression_size + 1, expression_size)

    def audio_features(self, windows: torch.Tensor) -> torch.Tensor:
        """Mel windows (N, 1, 80, 16) -> audio features (N, 512)."""
        return self.audio_encoder(windows)

    def forward(self, windows: torch.Tensor, ref_exp: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
        """windows (N, 1, 80, 16), ref_exp (N, 64), blink ratio (N, 1) in [0, 1] -> expression (N, 64)."""
        features = self.audio_features(windows)
        head_input = torch.cat([features, ref_exp.reshape(len(features), -1), blink.reshape(len(features), -1)], 1)
        return self.mapping1(head_input)
