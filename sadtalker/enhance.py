"""Face restoration (GFPGAN v1.4, RestoreFormer, CodeFormer) behind one small interface.

The official SadTalker runs GFPGANer on every frame with a forced 2x upscale. We restore the face crop at its own
resolution instead: resize to the network's 512x512 input, restore, resize back, then blend with the input by
`strength`. The networks come from spandrel (the loader the WebUI itself uses since 1.8), so neither `gfpgan` nor
`basicsr` is needed; CodeFormer comes from `spandrel_extra_arches`. spandrel needs torchvision, which is optional
for the rest of the package, so it is imported only when an enhancer is built.

The WebUI adapter can pass its own restorer instead: anything with `restore(face_rgb) -> face_rgb` fits
`FaceEnhancer`.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints.files import ENHANCER_FILES
from .checkpoints.reader import UNREADABLE_FILE_ERRORS, means_damaged_file
from .errors import CorruptCheckpoint, InvalidInput, MissingDependency, MissingWeights, UnsupportedCheckpoint
from .image import rgb_image



log = logging.getLogger("sadtalker")

# The official file names and release addresses live in the weight-file registry.
ENHANCERS: dict[str, str] = {name: wf.name for name, wf in ENHANCER_FILES.items()}

FACE_RESTORER_ARCHITECTURES = ("GFPGAN", "RestoreFormer", "CodeFormer")
NETWORK_INPUT_SIZE = 512  # all three were trained on 512x512 FFHQ-aligned faces
_READABLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


@runtime_checkable
class FaceEnhancer(Protocol):
    """Restores one face image: (H, W, 3) uint8 RGB in, the same shape and dtype out."""

    def restore(self, face_rgb: np.ndarray) -> np.ndarray: ...


# -- spandrel -----------------------------------------------------------------------------------------------


@functools.cache
def _spandrel() -> ModuleType:
    """Import spandrel (and register the extra architectures once), or say which package to install."""
    with warnings.catch_warnings():  # spandrel's import trips torch's own torch.jit.script deprecation notice
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return _import_spandrel()


def _import_spandrel() -> ModuleType:
    try:
        import spandrel
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "spandrel"
        if missing == "torchvision":
            hint = "pip install torchvision (the build that matches your torch)"
        elif missing.startswith("spandrel"):
            hint = "pip install spandrel spandrel-extra-arches"
        else:
            hint = f"pip install {missing}"
        raise MissingDependency(f"face enhancement needs the package '{missing}', which is not installed: {hint}"
                                ) from exc
    _register_extra_architectures(spandrel)
    return spandrel


def _register_extra_architectures(spandrel: ModuleType) -> bool:
    """Add CodeFormer & co. to spandrel's registry (0.2: `install()`; 0.1.1: `MAIN_REGISTRY.add`). False if absent."""
    try:
        import spandrel_extra_arches as extra
    except ImportError:
        return False
    if hasattr(extra, "install"):
        extra.install(ignore_duplicates=True)
    else:
        try:
            spandrel.MAIN_REGISTRY.add(*extra.EXTRA_REGISTRY)
        except ValueError:  # DuplicateArchitectureError: the host (e.g. the WebUI) registered them already
            pass
    return True


def _extra_architectures_available() -> bool:
    try:
        import spandrel_extra_arches  # noqa: F401
    except ImportError:
        return False
    return True


def _download_hint(file_name: str) -> str:
    try:
        from .checkpoints.files import by_name

        return " Download: " + " or ".join(by_name(file_name).urls)
    except (ImportError, KeyError):
        return ""


def _load_descriptor(path: Path):
    """spandrel's ModelDescriptor of a face restorer file, with every failure mapped to a named error."""
    spandrel = _spandrel()
    if not path.is_file():
        raise MissingWeights(f"face enhancer weights not found: {path}.{_download_hint(path.name)}")
    if path.suffix.lower() not in _READABLE_SUFFIXES:
        raise UnsupportedCheckpoint(f"{path.name}: face enhancer files must be one of {', '.join(_READABLE_SUFFIXES)}")
    loader = spandrel.ModelLoader(device="cpu")
    try:
        state_dict = loader.load_state_dict_from_file(path)
    except UNREADABLE_FILE_ERRORS as exc:
        if not means_damaged_file(exc):
            raise
        raise CorruptCheckpoint(f"{path.name}: cannot read it ({exc}); delete it and download it again") from exc
    try:
        descriptor = loader.load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as exc:
        if "idx_pred_layer.1.weight" in state_dict and not _extra_architectures_available():
            raise MissingDependency(f"{path.name} is a CodeFormer file, which needs the package "
                                    "'spandrel-extra-arches': pip install spandrel-extra-arches") from exc
        sample = ", ".join(list(state_dict)[:4])
        raise UnsupportedCheckpoint(f"{path.name} is not a face restorer that spandrel knows "
                                    f"(expected {', '.join(FACE_RESTORER_ARCHITECTURES)}; first keys: {sample})"
                                    ) from exc
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        # a recognised layout whose tensors do not fit: torch's strict load says "size mismatch" (RuntimeError),
        # spandrel's detection reads shapes by key (KeyError, IndexError); running out of memory is not this
        if not means_damaged_file(exc):
            raise
        raise CorruptCheckpoint(f"{path.name}: the weights do not fit their network ({exc})") from exc
    arch = _architecture_id(descriptor)
    if arch not in FACE_RESTORER_ARCHITECTURES:
        raise UnsupportedCheckpoint(f"{path.name} is a {arch} model ({descriptor.purpose}), not a face restorer "
                                    f"({', '.join(FACE_RESTORER_ARCHITECTURES)})")
    return descriptor


def _architecture_id(descriptor) -> str:
    return getattr(descriptor.architecture, "id", descriptor.architecture)  # spandrel < 0.2 used a plain string


def _usable_dtype(descriptor, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """`dtype` where the network and the device both do well in it, else float32.

    On CPU only GFPGAN runs in bfloat16, and only on CPUs with bf16 instructions: measured here (random weights
    of the v1.4 shapes, 512x512, 2 threads) its decoder in bf16 with the U-Net half in float32 took 1.29 s
    against 2.18 s, at 36.6 dB PSNR against float32. RestoreFormer and CodeFormer were not measured in bf16 on
    CPU, so they stay float32 there.
    """
    if dtype == torch.float32:
        return dtype
    architecture = _architecture_id(descriptor)
    supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    if device.type == "cpu":
        from .render import cpu_has_fast_bfloat16

        usable = dtype == torch.bfloat16 and architecture == "GFPGAN" and cpu_has_fast_bfloat16()
    else:
        usable = supported.get(dtype, False)
    if not usable:
        log.info("face enhancer %s: %s is not used on %s; running in float32", architecture, dtype, device)
        return torch.float32
    return dtype


# GFPGAN's parts that run in half precision: the SFT conditions and the StyleGAN2 decoder, ~80% of its time. The
# U-Net half (encoder, style code, upsampling path) stays float32: in bf16 it alone cost ~4 dB of PSNR for 10% of
# the time (a 4 dB loss here for the encoder's 0.14 s of 2.1 s).
_GFPGAN_HALF_PRECISION_PARTS = ("condition_scale", "condition_shift", "stylegan_decoder")


def _cast_floating_inputs(dtype: torch.dtype):
    def cast(value):  # inputs may nest lists: GFPGAN's decoder takes ([style_code], conditions)
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (list, tuple)):
            return type(value)(cast(item) for item in value)
        if isinstance(value, dict):
            return {key: cast(item) for key, item in value.items()}
        return value

    def hook(module, args, kwargs):
        return cast(args), cast(kwargs)

    return hook


def _run_in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Weights in `dtype`, and every floating input cast to it on the way in (so float32 parts can feed it)."""
    module.to(dtype)
    called = module.children() if isinstance(module, torch.nn.ModuleList) else (module,)  # a list is never called
    for part in called:
        part.register_forward_pre_hook(_cast_floating_inputs(dtype), with_kwargs=True)


def _to_channels_last(model: torch.nn.Module, architecture: str) -> None:
    """oneDNN runs half-precision convolutions without reordering every map when they are channels-last (GFPGAN
    in bf16: 1.22 -> 0.91 s at 512)."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    if architecture == "GFPGAN":  # its forward flattens final_conv's output with .view, which needs NCHW order
        model.final_conv.register_forward_hook(lambda module, args, output: output.contiguous())


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{name} must be between 0 and 1, got {value}")
    return value


# -- the enhancer -------------------------------------------------------------------------------------------


class SpandrelEnhancer:
    """GFPGAN v1.4 / RestoreFormer / CodeFormer loaded from an official file through spandrel.

    `strength` (0..1) blends the restored face over the input: 0 returns the input unchanged, 1 the network's
    output. `fidelity` is CodeFormer's `w` (0: strongest restoration, 1: closest to the input; the WebUI's
    default 0.5). GFPGAN runs with its stored noise maps rather than fresh random noise each call, so the same
    face gives the same result on every frame (the official per-call noise makes restored videos shimmer).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 *, strength: float = 1.0, fidelity: float = 0.5, batch_size: int = 4):
        self.path = Path(path)
        self.strength = _check_fraction("strength", strength)
        self.fidelity = _check_fraction("fidelity", fidelity)
        self.batch_size = max(1, int(batch_size))
        descriptor = _load_descriptor(self.path)
        self.architecture: str = _architecture_id(descriptor)
        self.device = torch.device(device)
        self.dtype = _usable_dtype(descriptor, dtype, self.device)
        self.model: torch.nn.Module = descriptor.model.to(device=self.device).eval()
        self.channels_last = self.dtype != torch.float32  # float32 stays exactly the WebUI's own call
        if self.dtype != torch.float32:
            for part in self._half_precision_parts():
                _run_in_dtype(part, self.dtype)
            _to_channels_last(self.model, self.architecture)
        log.info("face enhancer %s loaded from %s on %s (%s)", self.architecture, self.path.name, self.device,
                 self.dtype)

    @classmethod
    def from_folder(cls, name: str, folder: str | Path, **kwargs) -> SpandrelEnhancer:
        """Load `ENHANCERS[name]` (gfpgan / restoreformer / codeformer) from `folder`."""
        if name not in ENHANCERS:
            raise InvalidInput(f"unknown face enhancer '{name}'; choose one of {', '.join(ENHANCERS)}")
        return cls(Path(folder) / ENHANCERS[name], **kwargs)

    def _half_precision_parts(self) -> list[torch.nn.Module]:
        if self.architecture == "GFPGAN":
            return [getattr(self.model, name) for name in _GFPGAN_HALF_PRECISION_PARTS]
        return [self.model]

    def __repr__(self) -> str:
        return f"SpandrelEnhancer({self.architecture}, {self.path.name}, {self.device}, {self.dtype})"

    def restore(self, face_rgb: np.ndarray, strength: float | None = None) -> np.ndarray:
        """One face: (H, W, 3) uint8 RGB → restored (H, W, 3) uint8 RGB at the same size."""
        return self.restore_batch([face_rgb], strength=strength)[0]

    def restore_batch(self, faces_rgb: Sequence[np.ndarray], strength: float | None = None) -> list[np.ndarray]:
        """Many faces (sizes may differ), `batch_size` at a time through the network. Same shapes out."""
        strength = self.strength if strength is None else _check_fraction("strength", strength)
        for face in faces_rgb:
            rgb_image(face, "a face to restore", min_side=1)
        if strength == 0.0:
            return [face.copy() for face in faces_rgb]
        restored: list[np.ndarray] = []
        for start in range(0, len(faces_rgb), self.batch_size):
            restored.extend(self._restore_chunk(faces_rgb[start:start + self.batch_size], strength))
        return restored

    @torch.inference_mode()
    def _restore_chunk(self, faces_rgb: Sequence[np.ndarray], strength: float) -> list[np.ndarray]:
        originals = [torch.from_numpy(np.ascontiguousarray(face)).to(self.device).permute(2, 0, 1).float() / 255.0
                     for face in faces_rgb]
        network_in = torch.cat([_resize(face[None], NETWORK_INPUT_SIZE, NETWORK_INPUT_SIZE) for face in originals])
        network_in = network_in * 2.0 - 1.0
        if self.channels_last:
            network_in = network_in.contiguous(memory_format=torch.channels_last)
        network_out = self._forward(network_in).float()
        network_out = ((network_out + 1.0) / 2.0).clamp(0.0, 1.0)
        results = []
        for original, out in zip(originals, network_out, strict=True):
            back = _resize(out[None], original.shape[1], original.shape[2])[0]
            blended = original + strength * (back - original)
            results.append((blended * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy())
        return results

    def _forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(N, 3, 512, 512) RGB in [-1, 1] → the same, as each network's own inference code calls it."""
        if self.architecture == "GFPGAN":
            return self.model(faces, return_rgb=False, randomize_noise=False)[0]
        if self.architecture == "CodeFormer":
            return self.model(faces, weight=self.fidelity)[0]
        return self.model(faces)[0]


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W); antialiased when shrinking so downscaled faces do not alias."""
    if images.shape[-2:] == (height, width):
        return images
    shrinking = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
