"""What the renderer is fed, from a coefficient sequence: per-frame targets (expression and head-motion scales,
still mode), the source's semantics, the 27-frame windows, the official batch packing and free-view angles.

Coefficient layout as in `motion.py`. Functions take numpy arrays and return numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .errors import InvalidInput
from .motion import COEFF_SIZE, EXP, POSE, SOURCE_COEFF_SIZE, coeff_rows, source_row
from .options import PREPROCESS_MODES, GenerateOptions

SEMANTIC_RADIUS = 13  # a window holds frames t-13 .. t+13



def _is_full(preprocess: str) -> bool:
    mode = preprocess.lower()
    if mode not in PREPROCESS_MODES:
        raise InvalidInput(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {preprocess!r}")
    return "full" in mode


def render_targets(coeffs: np.ndarray, source: np.ndarray, *, preprocess: str, still: bool,
                   expression_scale: float = 1.0, head_motion_scale: float = 1.0) -> np.ndarray:
    """Per-frame renderer targets (T, C): C = 73 for full/extfull (source crop appended), else 70.

    exp (0:64) is multiplied by `expression_scale`; the pose (64:70) is moved toward the source pose by
    `head_motion_scale` (pose = source + scale * (pose - source); 1 = official, 0 = the source pose); `still`
    replaces columns 64: (pose, and crop) by the source's, so it wins over the scale. The exp columns, which carry
    the blinks, are kept in still mode.
    """
    full = _is_full(preprocess)
    gen = coeff_rows(coeffs, "coefficients")[:, :COEFF_SIZE].copy()
    src = source_row(source, SOURCE_COEFF_SIZE if full else COEFF_SIZE)
    gen[:, EXP] *= np.float32(expression_scale)
    if head_motion_scale != 1.0:
        gen[:, POSE] = src[POSE] + np.float32(head_motion_scale) * (gen[:, POSE] - src[POSE])
    if full:
        gen = np.concatenate([gen, np.repeat(src[None, COEFF_SIZE:SOURCE_COEFF_SIZE], len(gen), 0)], 1)
    if still:
        gen[:, 64:] = src[64:gen.shape[1]]
    return gen


def source_semantics(source: np.ndarray, preprocess: str) -> np.ndarray:
    """The renderer's source input (C, 27): the source row (70, or 73 for full modes) repeated over the window."""
    size = SOURCE_COEFF_SIZE if _is_full(preprocess) else COEFF_SIZE
    row = source_row(source, size)[:size]
    return np.repeat(row[:, None], 2 * SEMANTIC_RADIUS + 1, 1)


def frame_windows(targets: np.ndarray, start: int, stop: int, *, radius: int = SEMANTIC_RADIUS) -> np.ndarray:
    """Renderer windows of frames start..stop-1: (stop - start, C, 2r+1); frame t holds rows t-r..t+r (clamped).

    Built on demand, so long clips never hold every window at once.
    """
    targets = np.asarray(targets)
    frames = np.arange(start, stop)[:, None] + np.arange(-radius, radius + 1)[None]
    return targets[np.clip(frames, 0, len(targets) - 1)].transpose(0, 2, 1)


def split_batches(sequence: np.ndarray, batch_size: int) -> np.ndarray:
    """Official batch layout: pad (T, ...) to a multiple of batch_size by repeating the last item, then reshape
    row-major to (batch_size, n, ...), so batch row b holds frames b*n .. b*n+n-1."""
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    sequence = np.asarray(sequence)
    missing = -len(sequence) % batch_size
    if missing:
        sequence = np.concatenate([sequence, np.repeat(sequence[-1:], missing, 0)], 0)
    return sequence.reshape(batch_size, -1, *sequence.shape[1:])


def pack_batches(targets: np.ndarray, batch_size: int) -> np.ndarray:
    """The official `target_semantics_list`: (batch_size, n, C, 27) from targets (T, C). Holds every window:
    for long clips use `frame_windows` per batch instead."""
    return split_batches(frame_windows(targets, 0, len(targets)), batch_size)


def free_view_angles(keyframes_deg: Sequence[float], num_frames: int) -> np.ndarray:
    """Camera angle per frame (T,) float32, degrees, from keyframes (official gen_camera_pose, without packing).

    One value: constant. Several: the total |change| is spread evenly over the T-1 frame steps and each segment is
    arange(start, end, +-step); the list is cut, or padded with its last value, to T. (A segment with no change
    adds no frames; the official code divides by zero there.)
    """
    keys = [float(k) for k in keyframes_deg]
    if not keys:
        raise InvalidInput("free-view angles need at least one keyframe")
    if len(keys) == 1 or num_frames < 2:
        return np.full(num_frames, keys[0], np.float32)
    segments = list(pairwise(keys))
    total = 0.0
    for prev, cur in segments:
        total += abs(cur - prev)
    per_frame = total / (num_frames - 1)
    values: list[float] = []
    for prev, cur in segments:
        if cur != prev:  # the official formula divides by the change
            values.extend(np.arange(prev, cur, per_frame * abs(cur - prev) / (cur - prev)).tolist())
    values = values[:num_frames] or [keys[0]]
    values += [values[-1]] * (num_frames - len(values))
    return np.asarray(values, np.float64).astype(np.float32)


FREE_VIEW = ("yaw", "pitch", "roll")


@dataclass(frozen=True)
class RendererInputs:
    """Everything the renderer is fed for one video, from the coefficients and the options (nothing rendered).

    targets (T, C) per-frame coefficients (C = 70, or 73 for full modes); semantics (C, 27) the source's window;
    angles: the free-view sequences given ((T,) degrees each, only for yaw / pitch / roll keyframes set).
    """

    targets: np.ndarray
    semantics: np.ndarray
    angles: dict[str, np.ndarray]

    @property
    def num_frames(self) -> int:
        return len(self.targets)

    def batches(self, batch_size: int) -> list[tuple[int, int]]:
        """(start, stop) of each renderer call: `batch_size` frames each, the last one shorter."""
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}", option="batch_size")
        return [(start, min(start + batch_size, self.num_frames)) for start in range(0, self.num_frames, batch_size)]

    def batch(self, start: int, stop: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Frames start..stop-1: their windows (n, C, 27) and their free-view angles (n,) by name."""
        return frame_windows(self.targets, start, stop), {k: v[start:stop] for k, v in self.angles.items()}


def renderer_inputs(coeffs: np.ndarray, source: np.ndarray, options: GenerateOptions) -> RendererInputs:
    """The renderer's inputs as the options ask: preprocess family, still, expression and head-motion scales,
    yaw / pitch / roll keyframes."""
    targets = render_targets(coeffs, source, preprocess=options.preprocess, still=options.still,
                             expression_scale=options.expression_scale, head_motion_scale=options.head_motion_scale)
    angles = {name: free_view_angles(getattr(options, name), len(targets))
              for name in FREE_VIEW if getattr(options, name)}
    return RendererInputs(targets, source_semantics(source, options.preprocess), angles)
