"""3DMM coefficients of the source face: run the face3d net on the aligned 224 crop and keep what SadTalker uses."""

from __future__ import annotations

import numpy as np
import torch

from sadtalker.errors import ImageError
from sadtalker.nets.face3d import COEFFICIENT_GROUPS, NUM_COEFFICIENTS

ALIGNED_SIZE = 224


def split_coefficients(coefficients: np.ndarray | torch.Tensor) -> dict[str, np.ndarray | torch.Tensor]:
    """Split (..., 257) coefficients into their groups (Deep3DFaceRecon order).

    Returns views: id (..., 80), exp (..., 64), tex (..., 80), angle (..., 3) [radians], gamma (..., 27)
    [SH lighting], trans (..., 3).
    """
    if coefficients.shape[-1] != NUM_COEFFICIENTS:
        raise ValueError(f"expected (..., {NUM_COEFFICIENTS}) coefficients, got {tuple(coefficients.shape)}")
    groups = {}
    start = 0
    for name, width in COEFFICIENT_GROUPS:
        groups[name] = coefficients[..., start : start + width]
        start += width
    return groups


def image_to_input(aligned224_u8: np.ndarray) -> torch.Tensor:
    """(224, 224, 3) uint8 RGB -> (1, 3, 224, 224) float32 in [0, 1], as the official code builds it."""
    if aligned224_u8.dtype != np.uint8 or aligned224_u8.shape != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
        raise ImageError(
            f"the aligned face must be a ({ALIGNED_SIZE}, {ALIGNED_SIZE}, 3) uint8 RGB image, "
            f"got {aligned224_u8.shape} {aligned224_u8.dtype}"
        )
    # Divide in float64 then round to float32, like `torch.tensor(img / 255., dtype=float32)`.
    scaled = (aligned224_u8.astype(np.float64) / 255.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))[None]


@torch.no_grad()
def face3d_coefficients(net: torch.nn.Module, aligned224_u8: np.ndarray) -> np.ndarray:
    """All 257 coefficients of one aligned face: (224, 224, 3) uint8 RGB -> (1, 257) float32."""
    parameter = next(net.parameters())
    images = image_to_input(aligned224_u8).to(device=parameter.device, dtype=parameter.dtype)
    return net(images).float().cpu().numpy()


def source_coefficients(net: torch.nn.Module, aligned224_u8: np.ndarray, trans_params: np.ndarray) -> np.ndarray:
    """The source's `coeff_3dmm` row: exp 64 | angle 3 | trans 3 | crop (s, tx, ty) 3 -> (1, 73) float32.

    `net` is a loaded `ReconNet` (eval mode); `aligned224_u8` the `align_img` output (224, 224, 3) uint8 RGB;
    `trans_params` the alignment's [w0, h0, s, tx, ty] (5,), of which the last three are appended.
    """
    trans_params = np.asarray(trans_params, dtype=np.float32).reshape(-1)
    if trans_params.shape != (5,):
        raise ValueError(f"trans_params must hold [w0, h0, s, tx, ty], got shape {trans_params.shape}")
    groups = split_coefficients(face3d_coefficients(net, aligned224_u8))
    return np.concatenate(
        [groups["exp"], groups["angle"], groups["trans"], trans_params[None, 2:]], axis=1
    ).astype(np.float32)
