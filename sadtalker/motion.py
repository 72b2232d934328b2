"""Audio -> coefficients (the paper's ExpNet and PoseVAE step): blinks, expression and pose prediction, pose
smoothing, reference-video motion. What the renderer is fed from these coefficients is `render_inputs.py`.

Coefficient layout: 70 = expression 0:64 | angles 64:67 (pitch, yaw, roll; radians) | translation 67:70; a source
row adds the crop triple (s, tx, ty) at 70:73. Functions take numpy arrays (or tensors) and return float32 numpy
arrays; the networks run on whatever device/dtype they live on, and random draws always happen on the CPU.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import savgol_filter

from .errors import InvalidInput
from .nets.audio2exp import Audio2Exp
from .nets.audio2pose import Audio2Pose

logger = logging.getLogger("sadtalker")

EXP = slice(0, 64)
POSE = slice(64, 70)
COEFF_SIZE = 70
SOURCE_COEFF_SIZE = 73
MEL_WINDOW = (80, 16)

BLINK_SHAPE = (0.5, 0.9, 1.0, 0.9, 0.5)
EXPRESSION_CHUNK = 10
SMOOTH_WINDOW = 13
SMOOTH_POLYORDER = 2


# ---------------------------------------------------------------------------------------------------------- blinks

def draw_blinks(num_frames: int, rng: random.Random) -> np.ndarray:
    """The blink start draws, in the official order: (K, 3) int64 rows (low, high, value of choice(range(low, high))).

    The last draw is the one that no longer fits (it ends the loop) and is recorded too. No draws for T <= 20.
    """
    draws: list[tuple[int, int, int]] = []

    def choose(low: int, high: int) -> int:
        value = rng.choice(range(low, high))
        draws.append((low, high, value))
        return value

    _blink_schedule(num_frames, choose)
    return np.array(draws, dtype=np.int64).reshape(-1, 3)


def blink_ratio(num_frames: int, rng: random.Random | None = None, *, draws: np.ndarray | None = None) -> np.ndarray:
    """Eye-blink ratio per frame (T, 1) float32 in [0, 1] (0 = open; a blink is 0.5, 0.9, 1, 0.9, 0.5).

    Blinks are drawn from `rng` exactly as the official `generate_blink_seq_randomly` draws from Python's global
    `random` (so `random.Random(1234)` reproduces a run after `random.seed(1234)`), or replayed from `draws`
    ((K, 3) from `draw_blinks`, or (K,) start values). `rng=None` and no draws: a fresh unseeded generator.
    """
    if draws is None:
        source = rng if rng is not None else random.Random()
        return _blink_schedule(num_frames, lambda low, high: source.choice(range(low, high)))
    values = iter(np.asarray(draws).reshape(len(draws), -1)[:, -1].tolist())

    def replay(low: int, high: int) -> int:
        try:
            return int(next(values))
        except StopIteration:
            raise InvalidInput(f"blink draws ran out: {len(draws)} given, {num_frames} frames need more") from None

    return _blink_schedule(num_frames, replay)


def _blink_schedule(num_frames: int, choose: Callable[[int, int], int]) -> np.ndarray:
    ratio = np.zeros((num_frames, 1), np.float32)
    if num_frames <= 20:
        return ratio
    frame = 0
    while frame < num_frames:
        start = choose(min(10, num_frames), min(num_frames // 2, 70))
        if frame + start + len(BLINK_SHAPE) > num_frames - 1:
            break
        ratio[frame + start:frame + start + len(BLINK_SHAPE), 0] = BLINK_SHAPE
        frame += start + len(BLINK_SHAPE)
    return ratio


# ----------------------------------------------------------------------------------------------- reference video

def tile_reference(rows: np.ndarray, num_frames: int) -> np.ndarray:
    """Loop a reference video's per-frame rows (N, D) to exactly `num_frames` rows (whole copies, then a part)."""
    rows = np.asarray(rows)
    if len(rows) == 0:
        raise InvalidInput("the reference video has no frames with coefficients")
    copies = -(-num_frames // len(rows))
    return np.concatenate([rows] * copies, 0)[:num_frames] if copies > 1 else rows[:num_frames]


def apply_reference_blink(ref: np.ndarray, ratio: np.ndarray, ref_blink_coeffs: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Borrow blinks from a video: ref's expression (T, 0:64) becomes the looped video's, the ratio becomes 0."""
    ref = np.array(ref, np.float32, copy=True)
    ref[:, EXP] = tile_reference(coeff_rows(ref_blink_coeffs, "reference blink coefficients")[:, EXP], len(ref))
    return ref, np.zeros_like(ratio, dtype=np.float32)


def apply_reference_pose(coeffs: np.ndarray, ref_pose_coeffs: np.ndarray) -> np.ndarray:
    """Add a video's relative head motion: coeffs[t, 64:70] += video[t] - video[0] (video looped to T frames)."""
    video_pose = tile_reference(coeff_rows(ref_pose_coeffs, "reference pose coefficients")[:, POSE], len(coeffs))
    out = np.array(coeffs, np.float32, copy=True)
    out[:, POSE] = out[:, POSE] + (video_pose - video_pose[:1])
    return out


# ------------------------------------------------------------------------------------------------------- networks

def _net_place(net: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    weight = next(net.parameters())
    return weight.device, weight.dtype


def _as_windows(windows: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, 80, 16) or (T, 1, 80, 16) -> float tensor (T, 1, 80, 16) on the CPU."""
    tensor = windows.detach().cpu() if torch.is_tensor(windows) else torch.from_numpy(np.asarray(windows, np.float32))
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != (1, *MEL_WINDOW):
        raise InvalidInput(f"mel windows must be (T, 80, 16), got {tuple(tensor.shape)}")
    return tensor.float()


@torch.no_grad()
def predict_expression(net: Audio2Exp, windows: np.ndarray | torch.Tensor, ref: np.ndarray, ratio: np.ndarray,
                       *, chunk_size: int = EXPRESSION_CHUNK) -> np.ndarray:
    """Audio2Exp over a clip: windows (T, 80, 16), ref (T, >=64) (its 0:64 is used), ratio (T, 1) -> exp (T, 64).

    Frames are independent; `chunk_size` (official: 10) only bounds memory.
    """
    device, dtype = _net_place(net)
    mels = _as_windows(windows)
    ref_exp = torch.as_tensor(np.asarray(ref, np.float32)[:, EXP])
    blink = torch.as_tensor(np.asarray(ratio, np.float32).reshape(-1, 1))
    if not len(mels) == len(ref_exp) == len(blink):
        raise InvalidInput(f"frame counts differ: windows {len(mels)}, ref {len(ref_exp)}, ratio {len(blink)}")
    chunks = [net(mels[part].to(device, dtype), ref_exp[part].to(device, dtype), blink[part].to(device, dtype))
              .float().cpu() for part in _chunks(len(mels), chunk_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 64), np.float32)


def pose_window_count(num_frames: int, seq_len: int = 32) -> int:
    """How many 32-frame windows (= latent draws) Audio2Pose runs for T frames (frame 0 is the reference)."""
    moving = max(num_frames - 1, 0)
    return moving // seq_len + (moving % seq_len != 0)


@torch.no_grad()
def predict_pose(net: Audio2Pose, windows: np.ndarray | torch.Tensor, ref_pose: np.ndarray, pose_style: int, *,
                 z: np.ndarray | torch.Tensor | None = None, generator: torch.Generator | None = None,
                 chunk_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Audio2Pose over a clip -> (raw pose (T, 6) before smoothing, z used (K, 1, 64)), both float32.

    Frame 0 is the reference pose (motion 0). The other T-1 frames go in windows of 32, each with its own z; a
    remainder uses the LAST 32 frames (front-padded with its first embedding when fewer exist) and keeps its last
    outputs. `z` replays given latents; else one `torch.randn(1, 64, generator=generator)` per window, in order, on
    the CPU (so a generator seeded S equals the official run after `torch.manual_seed(S)`, on any device).
    """
    device, dtype = _net_place(net)
    seq_len, latent = net.seq_len, net.latent_size
    if not 0 <= int(pose_style) < net.num_styles:
        raise InvalidInput(f"pose_style must be in [0, {net.num_styles}), got {pose_style}")
    mels = _as_windows(windows)
    num_frames = len(mels)
    ref = torch.as_tensor(np.asarray(ref_pose, np.float32).reshape(-1))
    if ref.numel() != 6:
        raise InvalidInput(f"ref_pose must hold 6 values, got {ref.numel()}")
    count = pose_window_count(num_frames, seq_len)
    latents = _latents(z, count, latent, generator)
    if count == 0:
        return ref.reshape(1, 6).repeat(num_frames, 1).numpy(), latents.numpy()

    moving_mels = mels[1:]  # frame 0 is the reference
    emb = torch.cat([net.encode_audio(moving_mels[part].to(device, dtype))[0]
                     for part in _chunks(num_frames - 1, chunk_size)])
    audio = _pose_audio_windows(emb, seq_len)
    style = torch.full((count,), int(pose_style), dtype=torch.long, device=device)
    ref_batch = ref.to(device, dtype).expand(count, 6)
    z_batch = latents.reshape(count, latent).to(device, dtype)
    window_motion = torch.cat([net.decode(ref_batch[part], z_batch[part], style[part], audio[part]).float().cpu()
                               for part in _chunks(count, chunk_size)])
    full, remainder = divmod(num_frames - 1, seq_len)
    parts = [torch.zeros(1, 6), window_motion[:full].reshape(-1, 6)]
    if remainder:
        parts.append(window_motion[-1, -remainder:])
    return (ref + torch.cat(parts)).numpy(), latents.numpy()


def _pose_audio_windows(emb: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Frame embeddings (T-1, 512) -> windows (K, 32, 512): the full windows, then the last 32 frames if any remain
    (front-padded with their first embedding when the clip holds fewer)."""
    full, remainder = divmod(len(emb), seq_len)
    windows = [emb[i * seq_len:(i + 1) * seq_len] for i in range(full)]
    if remainder:
        tail = emb[-seq_len:]
        windows.append(torch.cat([tail[:1].expand(seq_len - len(tail), -1), tail]))
    return torch.stack(windows)


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


def _latents(z, count: int, latent: int, generator: torch.Generator | None) -> torch.Tensor:
    if z is not None:
        given = z.detach().float().cpu() if torch.is_tensor(z) else torch.from_numpy(np.asarray(z, np.float32))
        if given.numel() != count * latent:
            raise InvalidInput(f"z must hold {count} latents of {latent} (shape ({count}, 1, {latent})), "
                               f"got shape {tuple(given.shape)}")
        return given.reshape(count, 1, latent)
    draws = [torch.randn(1, latent, generator=generator) for _ in range(count)]
    return torch.stack(draws) if draws else torch.zeros(0, 1, latent)


def smooth_pose(raw: np.ndarray) -> np.ndarray:
    """Savitzky-Golay along time (window 13, or the largest odd window <= T; poly 2; mode 'interp'): (T, 6) -> (T, 6).

    Raises InvalidInput for T < 3 (no window can fit a quadratic).
    """
    raw = np.asarray(raw, np.float64)  # float64 as the official run computed it (bit-equal to its output)
    frames = len(raw)
    if frames < 3:
        raise InvalidInput(f"audio too short: head-pose smoothing needs at least 3 video frames (0.12 s at 25 fps), "
                           f"got {frames}")
    window = SMOOTH_WINDOW if frames >= SMOOTH_WINDOW else (frames - 1) // 2 * 2 + 1
    return savgol_filter(raw, window, SMOOTH_POLYORDER, axis=0).astype(np.float32)


# ------------------------------------------------------------------------------------------------- Audio2Coeff

@dataclass
class CoefficientSequence:
    """What audio -> coefficients produced. All float32 numpy arrays.

    coeffs (T, 70) = [exp | smoothed pose (+ reference-video motion)]; exp (T, 64) Audio2Exp output;
    pose_raw (T, 6) Audio2Pose before smoothing; ratio (T, 1) blink ratio fed to Audio2Exp; z (K, 1, 64) latents.
    """

    coeffs: np.ndarray
    exp: np.ndarray
    pose_raw: np.ndarray
    ratio: np.ndarray
    z: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.coeffs)


def audio_to_coefficients(exp_net: Audio2Exp, pose_net: Audio2Pose, windows: np.ndarray | torch.Tensor,
                         source_coeff: np.ndarray, *, pose_style: int = 0, rng: random.Random | None = None,
                         generator: torch.Generator | None = None, use_blink: bool = True,
                         ref_blink_coeffs: np.ndarray | None = None, ref_pose_coeffs: np.ndarray | None = None,
                         z: np.ndarray | torch.Tensor | None = None, ratio: np.ndarray | None = None
                         ) -> CoefficientSequence:
    """The official Audio2Coeff.generate: mel windows (T, 80, 16) + source coeff (73,) -> CoefficientSequence.

    Blinks are drawn from `rng` unless `ratio` (T, 1) is given (drawn even when a reference blink video or
    use_blink=False then discards them, as the official code does); latents come from `generator` unless `z` is
    given. With rng=random.Random(S) and generator seeded S' this equals the official run after random.seed(S) and
    torch.manual_seed(S').
    `ref_blink_coeffs` / `ref_pose_coeffs` (N, >=70): reference-video coefficients (looped to T frames).
    Idle mode is all-zero windows.
    """
    mels = _as_windows(windows)
    num_frames = len(mels)
    ref = source_ref(source_coeff, num_frames)
    if ratio is None:
        ratio = blink_ratio(num_frames, rng)
    elif np.size(ratio) != num_frames:
        raise InvalidInput(f"ratio must hold one value per frame ({num_frames}), got shape {np.shape(ratio)}")
    ratio = np.asarray(ratio, np.float32).reshape(num_frames, 1)
    if ref_blink_coeffs is not None:
        ref, ratio = apply_reference_blink(ref, ratio, ref_blink_coeffs)
    if not use_blink:
        ratio = np.zeros_like(ratio)
    logger.debug("audio -> coefficients: %d frames, %d pose windows, pose style %d",
                 num_frames, pose_window_count(num_frames, pose_net.seq_len), pose_style)
    exp = predict_expression(exp_net, mels, ref, ratio)
    pose_raw, latents = predict_pose(pose_net, mels, ref[0, POSE], pose_style, z=z, generator=generator)
    coeffs = np.concatenate([exp, smooth_pose(pose_raw)], 1)
    if ref_pose_coeffs is not None:
        coeffs = apply_reference_pose(coeffs, ref_pose_coeffs)
    return CoefficientSequence(coeffs=coeffs, exp=exp, pose_raw=pose_raw, ratio=ratio, z=latents)


def source_ref(source_coeff: np.ndarray, num_frames: int) -> np.ndarray:
    """The networks' reference (T, 70): the source row's first 70 values repeated for every frame."""
    return np.repeat(source_row(source_coeff, COEFF_SIZE)[None, :COEFF_SIZE], num_frames, 0)


def source_row(source: np.ndarray, min_size: int) -> np.ndarray:
    """The source's coefficient row as (>= min_size,) float32, from (N,) or (1, N)."""
    row = np.asarray(source, np.float32)
    if row.ndim == 2 and len(row) >= 1:
        row = row[0]
    if row.ndim != 1 or row.shape[0] < min_size:
        raise InvalidInput(f"source coefficients must be ({min_size},) or (1, {min_size}) or longer, "
                           f"got {np.shape(source)}")
    return row


def coeff_rows(rows: np.ndarray, what: str) -> np.ndarray:
    """Per-frame coefficient rows (T, >= 70) as float32; `what` names them in the error."""
    rows = np.asarray(rows, np.float32)
    if rows.ndim != 2 or rows.shape[1] < COEFF_SIZE:
        raise InvalidInput(f"{what} must be (N, 70) or (N, 73), got {rows.shape}")
    return rows
