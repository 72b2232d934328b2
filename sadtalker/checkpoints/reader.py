"""Read tensors from checkpoint files without running code and without reading what is not needed.

safetensors files are opened lazily (only the requested prefix is read: the official code reads all 725 MB), and
read into memory of their own rather than memory-mapped: a mapped tensor keeps the whole file's mapping alive, so
every page once read (say, to convert it to bfloat16) would stay in the resident set next to the converted copy;
torch pickles are opened with `weights_only=True` (never execute a pickle) and flattened to
`<top-level key>.<state-dict key>`, the same naming the safetensors file uses for its components.
"""

from __future__ import annotations

import errno
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CorruptCheckpoint, MissingWeights

SAFETENSORS_SUFFIX = ".safetensors"
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_error() -> type[Exception]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # older safetensors do not export it; their errors are among the ones below
        return ValueError
    return SafetensorError


# What torch.load (weights_only) and safetensors raise for a truncated, damaged or foreign file: unpickling and
# zip errors, EOF, and from the unpickler on garbage bytes ValueError / UnicodeDecodeError, IndexError / KeyError
# and RuntimeError (the zip reader's "PytorchStreamReader failed ..."); torch's file reader gives OSError EINVAL
# for a cut zip. `means_damaged_file` then sorts out what is not damage: running out of memory, and OSErrors of
# the disk or permissions, reach the caller as they are.
UNREADABLE_FILE_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, LookupError, RuntimeError, OSError,
    _safetensors_error())

_OUT_OF_MEMORY = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)


def means_damaged_file(exc: BaseException) -> bool:
    """Whether an error from reading a weight file says the file is damaged (not memory, disk or permissions)."""
    if isinstance(exc, (MemoryError, *_OUT_OF_MEMORY)):
        return False
    if isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)):
        return False  # torch reports a failed allocation as a RuntimeError
    if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile):
        return exc.errno in (None, errno.EINVAL)
    return isinstance(exc, UNREADABLE_FILE_ERRORS)


class CheckpointReader:
    """Keys, shapes and tensors of one checkpoint file, flattened to dotted keys."""

    def __init__(self, path: str | Path, *, name: str | None = None):
        """`name`: the file's real name when `path` is a temporary one (a download's `.part`)."""
        self.path = Path(path)
        self.name = name or self.path.name
        if not self.path.is_file():
            raise MissingWeights(f"checkpoint not found: {self.path}")
        self._pickled: dict[str, torch.Tensor] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        if self.name.endswith(SAFETENSORS_SUFFIX):
            self._read_safetensors_header()
        else:
            self._read_pickle()

    # -- opening ---------------------------------------------------------------------------------------------
    def _corrupt(self, why: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"{self.name}: {why} (file: {self.path}); delete it and download it again")

    def _read_safetensors_header(self) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    self._shapes[key] = tuple(handle.get_slice(key).get_shape())
        except UNREADABLE_FILE_ERRORS as exc:
            if not means_damaged_file(exc):
                raise
            raise self._corrupt(f"not a readable safetensors file ({exc})") from exc
        expected_end = self._safetensors_data_end()
        if expected_end is not None and expected_end > self.path.stat().st_size:
            raise self._corrupt(f"truncated: {self.path.stat().st_size} bytes, the header says {expected_end}")

    def _safetensors_data_end(self) -> int | None:
        import json
        import struct

        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + header_len + max(ends) if ends else None

    def _read_pickle(self) -> None:
        try:
            obj = self._torch_load()
        except UNREADABLE_FILE_ERRORS as exc:
            if not means_damaged_file(exc):
                raise
            text = str(exc)
            # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module ..."
            refused = re.search(r"(?i)unsupported (?:global: )?GLOBAL (\S+)", text)
            if refused:  # weights_only stopped a pickle that would import and call something
                raise self._corrupt(f"refused: its pickle would run code ({refused.group(1)}), not just load "
                                    "tensors") from exc
            if "Weights only load failed" in text:
                detail = next((line.strip() for line in text.splitlines() if line.strip().startswith("Unsupported")),
                              "not plain tensors")
                raise self._corrupt(f"refused: its pickle holds more than tensors ({detail})") from exc
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise self._corrupt(f"not a readable torch checkpoint ({type(exc).__name__}: {first_line})") from exc
        if not isinstance(obj, dict):
            raise self._corrupt(f"holds a {type(obj).__name__}, not a dict of state dicts")
        self._pickled = dict(_flatten(obj))
        self._shapes = {k: tuple(v.shape) for k, v in self._pickled.items()}

    def _torch_load(self) -> object:
        # mmap keeps large files out of RAM; only zip-format files (torch >= 1.6 saves) support it
        use_mmap = zipfile.is_zipfile(self.path)
        # torch.serialization.load, not torch.load: the WebUI replaces torch.load with its own unpickler, which
        # rejects the zip layout of newer torch saves and returns None; weights_only=True is the safety here
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user; errors are named
            warnings.simplefilter("ignore", UserWarning)
            return torch.serialization.load(str(self.path), map_location="cpu", weights_only=True, mmap=use_mmap)

    # -- access ----------------------------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """All tensors under `prefix.` with the prefix stripped."""
        lead = prefix + "."
        wanted = [k for k in self._shapes if k.startswith(lead)]
        if self._pickled is not None:
            return {k[len(lead):]: self._pickled[k] for k in wanted}
        try:
            return {k[len(lead):]: v for k, v in self._read_safetensors(wanted).items()}
        except UNREADABLE_FILE_ERRORS as exc:
            if not means_damaged_file(exc):
                raise
            raise self._corrupt(f"could not read the '{prefix}' tensors ({exc})") from exc

    def _read_safetensors(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The tensors `keys`, each read with plain file reads into a tensor of its own (see the module doc)."""
        import json
        import struct

        tensors = {}
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
            for key in sorted(keys, key=lambda k: header[k]["data_offsets"][0]):
                entry = header[key]
                start, end = entry["data_offsets"]
                raw = torch.empty(end - start, dtype=torch.uint8)
                f.seek(8 + header_len + start)
                if f.readinto(memoryview(raw.numpy())) != end - start:
                    raise ValueError(f"{key}: the file ends inside the tensor")
                tensors[key] = raw.view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        return tensors


def _flatten(obj: dict, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Nested dicts of tensors -> dotted keys. Non-tensor entries (epoch, optimizer scalars) are skipped."""
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, dict):
            yield from _flatten(value, name + ".")
