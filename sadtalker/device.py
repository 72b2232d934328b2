"""Which torch device a run uses: one answer for the command line, the Python API and the benchmark."""

from __future__ import annotations

import torch

from .errors import InvalidInput

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """A usable torch.device from 'cpu', 'cuda', 'cuda:1', 'mps', 'auto' (or None: the best one present).

    Asking for a device this machine does not have is a named error (option 'device'), not a crash in the
    first network call.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        resolved = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"device {device!r} is not a device name; use one of {', '.join(DEVICE_CHOICES)}",
                           option="device") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            built = "this torch has no CUDA support" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise InvalidInput(f"device {str(device)!r} is not available here ({built}); use cpu", option="device")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidInput(f"device {str(device)!r} is not available here: {torch.cuda.device_count()} CUDA "
                               f"device(s), numbered from 0", option="device")
    elif resolved.type == "mps" and not _mps_available():
        raise InvalidInput(f"device {str(device)!r} is not available here (no Apple GPU); use cpu", option="device")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise InvalidInput(f"device {str(device)!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}",
                           option="device")
    return resolved
