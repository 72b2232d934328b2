"""One descriptor per network: how to recognise it in a checkpoint (by keys and shapes) and how to build it.

A file is never recognised by its name. Each component has a few characteristic keys (relative to the
component's root) with their shapes, and the roots it is found under: the prefix in the released safetensors
file, or the top-level key of the legacy torch pickles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CorruptCheckpoint, UnsupportedCheckpoint
from .reader import CheckpointReader


@dataclass(frozen=True)
class Component:
    id: str
    roots: tuple[str, ...]
    signature: dict[str, tuple[int, ...] | None]  # key below the root -> exact shape (None: any shape)
    build: Callable[[], nn.Module]
    description: str

    def root_in(self, shapes: dict[str, tuple[int, ...]]) -> str | None:
        """The root under which this component's signature is found, if any."""
        for root in self.roots:
            if all(
                f"{root}.{key}" in shapes and (shape is None or shapes[f"{root}.{key}"] == shape)
                for key, shape in self.signature.items()
            ):
                return root
        return None


def _kp_detector() -> nn.Module:
    from ..nets.keypoints import KPDetector

    return KPDetector()


def _generator() -> nn.Module:
    from ..nets.generator import OcclusionAwareSPADEGenerator

    return OcclusionAwareSPADEGenerator()


def _audio2exp() -> nn.Module:
    from ..nets.audio2exp import Audio2Exp

    return Audio2Exp()


def _audio2pose() -> nn.Module:
    from ..nets.audio2pose import Audio2Pose

    return Audio2Pose()


def _face3d() -> nn.Module:
    from ..nets.face3d import ReconNet

    return ReconNet()


def _mapping(coeff_channels: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from ..nets.mapping import MappingNet

        return MappingNet(coeff_nc=coeff_channels)

    return build


COMPONENTS: tuple[Component, ...] = (
    Component("kp_extractor", ("kp_extractor", "kp_detector"),
              {"kp.weight": (15, 32, 3, 3, 3), "down.weight": (3, 1, 13, 13)}, _kp_detector,
              "canonical keypoint detector"),
    Component("generator", ("generator",),
              {"decoder.conv_img.weight": (3, 64, 3, 3), "dense_motion_network.mask.weight": None}, _generator,
              "SPADE face renderer"),
    Component("audio2exp", ("audio2exp", "model"), {"mapping1.weight": (64, 577)}, _audio2exp,
              "audio to expression net"),
    Component("audio2pose", ("audio2pose", "model"), {"netG.decoder.classbias": (46, 64)}, _audio2pose,
              "audio to head pose VAE"),
    Component("face_3drecon", ("face_3drecon", "net_recon"),
              {"backbone.conv1.weight": (64, 3, 7, 7), "final_layers.0.weight": (80, 2048, 1, 1)}, _face3d,
              "3DMM coefficient regressor"),
    Component("mapping70", ("mapping",), {"first.0.weight": (1024, 70, 7)}, _mapping(70),
              "mapping net, 70 coefficients (crop / extcrop / resize)"),
    Component("mapping73", ("mapping",), {"first.0.weight": (1024, 73, 7)}, _mapping(73),
              "mapping net, 73 coefficients (full / extfull)"),
)
COMPONENT_IDS = tuple(c.id for c in COMPONENTS)


def component(component_id: str) -> Component:
    for item in COMPONENTS:
        if item.id == component_id:
            return item
    raise KeyError(component_id)


def identify(reader: CheckpointReader) -> dict[str, str]:
    """{component id: root} for every component this file holds."""
    found = {}
    for item in COMPONENTS:
        root = item.root_in(reader.shapes)
        if root is not None:
            found[item.id] = root
    if not found:
        sample = ", ".join(list(reader.shapes)[:5]) or "no tensors"
        raise UnsupportedCheckpoint(
            f"{reader.name} is not a SadTalker checkpoint: its keys ({sample}, ...) match none of "
            f"{', '.join(COMPONENT_IDS)} (file: {reader.path})"
        )
    return found


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 5) -> str:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})")
    return "; ".join(parts)


def load_component(path: str | Path | CheckpointReader, component_id: str, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build one network and load its weights strictly from a checkpoint file (eval mode)."""
    reader = path if isinstance(path, CheckpointReader) else CheckpointReader(path)
    item = component(component_id)
    root = item.root_in(reader.shapes)
    if root is None:
        held = ", ".join(identify(reader)) if _holds_anything(reader) else "nothing we know"
        raise UnsupportedCheckpoint(
            f"{reader.name} holds no {component_id} ({item.description}); it holds {held} (file: {reader.path})"
        )
    state = reader.tensors(root)
    # Built without memory (meta device) and then handed the loaded tensors themselves (assign=True), so a
    # component never exists twice in RAM while it loads.
    with torch.device("meta"):
        model = item.build()
    mismatch = _describe_mismatch(model, state)
    if mismatch:
        raise CorruptCheckpoint(f"{reader.name}: component {component_id} does not match: {mismatch} "
                                f"(file: {reader.path})")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError(f"{component_id}: a tensor outside the state dict was left unallocated")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _holds_anything(reader: CheckpointReader) -> bool:
    return any(item.root_in(reader.shapes) for item in COMPONENTS)
