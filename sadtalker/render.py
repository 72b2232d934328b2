"""Face rendering: 3DMM coefficient windows -> keypoints -> frames, with the source image encoded once.

The official loop (`make_animation`) runs the keypoint detector and the mapping net on the source once, then for
every frame maps its 27-frame coefficient window to head pose / translation / expression, moves the canonical
keypoints accordingly and runs the generator. Here the source's appearance volume is also computed once
(`Renderer.prepare_source`), and `Renderer.render` takes any number of windows at once (the caller batches).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInput
from .nets.blocks import fold_spectral_norms, set_fast_paths
from .nets.generator import OcclusionAwareSPADEGenerator, weight_dtype
from .nets.keypoints import KPDetector
from .nets.mapping import MappingNet

# The official code converts with 3.14, not pi; keeping it is what makes our keypoints match the trained ones.
OFFICIAL_PI = 3.14
NUM_POSE_BINS = 66
DEGREES_PER_BIN = 3
FIRST_BIN_DEGREES = -99
WINDOW = 27  # coefficient frames per mapping-net input (t-13 .. t+13)

Array = np.ndarray | torch.Tensor
Angles = np.ndarray | torch.Tensor | float | None

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_fast_bfloat16() -> bool:
    """True where oneDNN runs bfloat16 convolutions in hardware (avx512_bf16 or AMX), so bf16 is a speed-up.

    torch's own `mkldnn._is_mkldnn_bf16_supported()` is also true on plain AVX-512, where bf16 is emulated and no
    faster, so the CPU flags decide (Linux /proc/cpuinfo; elsewhere: no).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The renderer's compute dtype for a `precision` option on a device.

    auto: bfloat16 on CUDA devices that have it (no float16 overflow risk), else float16 on CUDA; bfloat16 on CPUs
    with hardware bf16 (measured 1.9-2.2x the float32 rate here); float32 otherwise. An explicit half precision
    that the device cannot run fast is refused with a named error rather than run slowly or silently changed.
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_fast_bfloat16():
            return torch.bfloat16
        return torch.float32
    if precision not in PRECISION_DTYPES:
        raise InvalidInput(f"precision must be one of fp32, bf16, fp16, auto; got {precision!r}", option="precision")
    dtype = PRECISION_DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float16:
        raise InvalidInput("precision fp16 has no fast CPU kernels; use bf16 (CPUs with avx512_bf16 or AMX), fp32 "
                           "or auto", option="precision")
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bfloat16():
        raise InvalidInput("precision bf16 needs a CPU with bfloat16 instructions (avx512_bf16 or AMX); this one "
                           "would emulate it slower than fp32: use fp32 or auto", option="precision")
    return dtype


def source_image_input(face_u8: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 RGB face -> (1, 3, S, S) float32 in [0, 1], the renderer's source image."""
    return torch.from_numpy(np.ascontiguousarray(face_u8)).permute(2, 0, 1)[None].float() / 255.0


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Rendered frames (N, 3, S, S) float in [0, 1] -> (N, S, S, 3) uint8 RGB (clamped, rounded to nearest)."""
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def headpose_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """Pose bin logits (B, 66) -> angle in degrees (B,): 3 * E[bin index] - 99 under softmax(logits)."""
    probabilities = F.softmax(logits, dim=1)
    bins = torch.arange(NUM_POSE_BINS, dtype=logits.dtype, device=logits.device)
    return (probabilities * bins).sum(dim=1) * DEGREES_PER_BIN + FIRST_BIN_DEGREES


def rotation_matrix(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Head rotation from angles in degrees, each (B,) -> (B, 3, 3) = rot_x(pitch) @ rot_y(yaw) @ rot_z(roll)."""
    yaw, pitch, roll = (angle / 180 * OFFICIAL_PI for angle in (yaw, pitch, roll))
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def matrix(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=1).view(-1, 3, 3)

    pitch_mat = matrix(one, zero, zero,
                       zero, pitch.cos(), -pitch.sin(),
                       zero, pitch.sin(), pitch.cos())
    yaw_mat = matrix(yaw.cos(), zero, yaw.sin(),
                     zero, one, zero,
                     -yaw.sin(), zero, yaw.cos())
    roll_mat = matrix(roll.cos(), -roll.sin(), zero,
                      roll.sin(), roll.cos(), zero,
                      zero, zero, one)
    return pitch_mat @ yaw_mat @ roll_mat


def _angle(override: torch.Tensor | float | None, logits: torch.Tensor) -> torch.Tensor:
    if override is None:
        return headpose_to_degrees(logits)
    override = torch.as_tensor(override, dtype=logits.dtype, device=logits.device)
    return override.expand(logits.shape[0])


def transform_keypoints(kp_canonical: torch.Tensor, mapping_output: dict[str, torch.Tensor], *,
                        yaw: torch.Tensor | float | None = None, pitch: torch.Tensor | float | None = None,
                        roll: torch.Tensor | float | None = None, with_exp: bool = True) -> torch.Tensor:
    """Pose the canonical keypoints: Rot(yaw, pitch, roll) @ kp + (0, t_y, 0) + exp.

    kp_canonical (B, K, 3) (or (1, K, 3), broadcast to the mapping batch); mapping_output: MappingNet's dict
    (`yaw`/`pitch`/`roll` (B, 66) logits, `t` (B, 3), `exp` (B, 3K)). yaw / pitch / roll, in degrees (a number
    or (B,)), replace the predicted angles. Only the vertical translation is used. Returns (B, K, 3); the inputs
    are not modified.
    """
    rot = rotation_matrix(_angle(yaw, mapping_output["yaw"]), _angle(pitch, mapping_output["pitch"]),
                          _angle(roll, mapping_output["roll"]))
    kp = torch.einsum("bmp,bkp->bkm", rot, kp_canonical.expand(rot.shape[0], -1, -1))
    vertical_shift = F.pad(mapping_output["t"][:, 1:2], (1, 1))  # (B, 3) = (0, t_y, 0)
    kp = kp + vertical_shift[:, None, :]
    if with_exp:
        kp = kp + mapping_output["exp"].view(kp.shape[0], -1, 3)
    return kp


@dataclass(frozen=True)
class SourceState:
    """What a video needs from its source image, computed once.

    kp_canonical (1, 15, 3) and kp_source (1, 15, 3) (the canonical keypoints posed by the source coefficients),
    float32 (the keypoint math runs in float32 like the official code); feature_3d (1, 32, 16, S/4, S/4)
    appearance volume in the generator's encoder dtype; batch_size: the rows per mapping-net call (see
    `Renderer`).
    """

    kp_canonical: torch.Tensor
    kp_source: torch.Tensor
    feature_3d: torch.Tensor
    batch_size: int = 1

    @property
    def size(self) -> int:
        """Output frame size S in pixels."""
        return self.feature_3d.shape[-1] * 4


class Renderer:
    """Holds the three renderer networks (in eval mode) and renders frames for one source at a time.

    The mapping net runs in float32 like the official one, always `batch_size` rows per call: the source row
    repeated, target windows in groups padded with the last one (the official batch layout). float32 results
    depend on the call's row count (batch 1 and 2 logits differ by ~1e-4), so this grouping is what makes the
    keypoints equal to the official ones; frames therefore depend on the batch size, as in the official tool.
    The keypoint detector runs in its own dtype; the generator's per-frame convolutions in `compute_dtype`
    (float32, or bfloat16 / float16: see `OcclusionAwareSPADEGenerator.set_compute_dtype`), its coordinates and
    output in float32. The CPU fast paths (`sadtalker.nets.blocks`) are used on CPU only: they were written and
    measured for oneDNN; other devices run the plain reference forward. The generator's spectral norms are folded
    into its weights (`SpectralNormConv2d.fold_`): the renderer is for inference only.
    """

    def __init__(self, kp_detector: KPDetector | None, generator: OcclusionAwareSPADEGenerator,
                 mapping: MappingNet, *, compute_dtype: torch.dtype | None = None, fast_paths: bool | None = None):
        """compute_dtype: None keeps the generator as it is (float32 as loaded); fast_paths: None = on CPU only."""
        # None once released (it runs once per source); whoever holds the renderer attaches one again
        self.kp_detector: KPDetector | None = None if kp_detector is None else kp_detector.eval()
        # in float32, before any cast: the effective weights are then rounded once, and no frame recomputes them
        fold_spectral_norms(generator)
        if compute_dtype is not None:
            generator.set_compute_dtype(compute_dtype)
        device = next(generator.parameters()).device
        self.generator = set_fast_paths(generator.eval(), device.type == "cpu" if fast_paths is None else fast_paths)
        self.mapping = mapping.eval().to(device=device, dtype=torch.float32)
        self.coeff_channels = mapping.first[0].in_channels

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the generator's per-frame convolutions."""
        return weight_dtype(self.generator.decoder)

    @staticmethod
    def _input_for(network: torch.nn.Module, array: Array | float) -> torch.Tensor:
        """Any array-like -> a tensor on the network's device, in its floating dtype."""
        reference = next(network.parameters())
        return torch.as_tensor(array).to(device=reference.device, dtype=reference.dtype)

    def _check_windows(self, windows: torch.Tensor, what: str) -> None:
        if windows.ndim != 3 or windows.shape[1] != self.coeff_channels or windows.shape[2] != WINDOW:
            raise InvalidInput(f"{what} must be (N, {self.coeff_channels}, {WINDOW}) coefficient windows for this "
                               f"mapping net, got shape {tuple(windows.shape)}")

    def map_windows(self, windows: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
        """The mapping net over (N, C, 27) windows in calls of exactly `batch_size` rows (the last padded)."""
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
        outputs = []
        for start in range(0, len(windows), batch_size):
            group = windows[start:start + batch_size]
            missing = batch_size - len(group)
            padded = torch.cat([group, group[-1:].expand(missing, -1, -1)]) if missing else group
            outputs.append({name: value[:len(group)] for name, value in self.mapping(padded).items()})
        if not outputs:
            return self.mapping(windows)
        return {name: torch.cat([output[name] for output in outputs]) for name in outputs[0]}

    @torch.inference_mode()
    def prepare_source(self, source_image: Array, source_semantics: Array, batch_size: int = 1) -> SourceState:
        """source_image (1, 3, S, S) float RGB in [0, 1], S a multiple of 128 (256 or 512 for the released
        weights); source_semantics (1, C, 27): the source coefficient row repeated over the window, C = the
        mapping net's 70 or 73; batch_size: the run's frames per call (the mapping net's row count). -> SourceState."""
        if self.kp_detector is None:
            raise RuntimeError("this renderer's keypoint detector was released; get the renderer from the model "
                               "store again")
        image = self._input_for(self.kp_detector, source_image)
        if image.ndim != 4 or image.shape[:2] != (1, 3) or image.shape[2] != image.shape[3] or image.shape[2] % 128:
            raise InvalidInput(f"the source image must be (1, 3, S, S) with S a multiple of 128, "
                               f"got shape {tuple(image.shape)}")
        semantics = self._input_for(self.mapping, source_semantics)
        self._check_windows(semantics, "source_semantics")
        kp_canonical = self.kp_detector(image).to(semantics.dtype)
        source_rows = self.map_windows(semantics[:1].expand(batch_size, -1, -1), batch_size)
        kp_source = transform_keypoints(kp_canonical, {name: value[:1] for name, value in source_rows.items()})
        feature_3d = self.generator.encode_source(self._input_for(self.generator, source_image))
        return SourceState(kp_canonical=kp_canonical, kp_source=kp_source, feature_3d=feature_3d,
                           batch_size=batch_size)

    @torch.inference_mode()
    def driving_keypoints(self, state: SourceState, target_windows: Array, *, yaw: Angles = None,
                          pitch: Angles = None, roll: Angles = None) -> torch.Tensor:
        """target_windows (N, C, 27) -> kp_driving (N, 15, 3) float32, mapped `state.batch_size` rows per call.

        yaw / pitch / roll: optional (N,) degrees that replace the predicted angles.
        """
        windows = self._input_for(self.mapping, target_windows)
        self._check_windows(windows, "target_windows")
        overrides = {name: None if value is None else self._input_for(self.mapping, value)
                     for name, value in (("yaw", yaw), ("pitch", pitch), ("roll", roll))}
        return transform_keypoints(state.kp_canonical, self.map_windows(windows, state.batch_size), **overrides)

    @torch.inference_mode()
    def render(self, state: SourceState, target_windows: Array, yaw: Angles = None, pitch: Angles = None,
               roll: Angles = None) -> torch.Tensor:
        """target_windows (N, C, 27) -> frames (N, 3, S, S) float32 in [0, 1].

        yaw / pitch / roll: optional (N,) head angles in degrees that replace the predicted ones (the official
        `input_yaw` / `input_pitch` / `input_roll` sequences).
        """
        kp_driving = self.driving_keypoints(state, target_windows, yaw=yaw, pitch=pitch, roll=roll)
        if len(kp_driving) == 0:
            return torch.zeros(0, 3, state.size, state.size, device=kp_driving.device)
        coordinates = weight_dtype(self.generator.dense_motion_network.compress)
        kp_source = state.kp_source.to(coordinates).expand(kp_driving.shape[0], -1, -1)
        return self.generator.animate(state.feature_3d, kp_source, kp_driving.to(coordinates)).float()
