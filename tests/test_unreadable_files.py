"""A checkpoint that cannot be read is "corrupt, download it again"; running out of memory while reading is not.

Memory cannot be exhausted on purpose in a test, so the loader is made to fail the way torch fails; the corrupt
cases use real damaged files.
"""

from __future__ import annotations

import pytest
import torch

from sadtalker.checkpoints import reader as reader_module
from sadtalker.checkpoints.reader import CheckpointReader
from sadtalker.errors import CorruptCheckpoint
from sadtalker.face import detectors

NOT_DAMAGE = [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                                          "allocate memory: you tried to allocate 4294967296 bytes"),
              PermissionError(13, "Permission denied")]
NOT_DAMAGE_IDS = ["MemoryError", "torch-allocator", "permissions"]


@pytest.fixture()
def damaged(tmp_path):
    """A real torch checkpoint cut in half, and one of random bytes."""
    whole = tmp_path / "whole.pth"
    torch.save({"net": {"w": torch.arange(4096.0)}}, whole)
    half = tmp_path / "half.pth"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    return whole, [half, garbage]


def test_damaged_files_are_corrupt_checkpoints(damaged):
    whole, broken = damaged
    assert CheckpointReader(whole).shapes == {"net.w": (4096,)}
    for path in broken:
        with pytest.raises(CorruptCheckpoint, match="download it again"):
            CheckpointReader(path)
        with pytest.raises(CorruptCheckpoint):
            detectors.load_state_dict(path)


@pytest.mark.parametrize("error", NOT_DAMAGE, ids=NOT_DAMAGE_IDS)
def test_memory_or_permissions_are_not_called_corrupt(damaged, monkeypatch, error):
    whole, _ = damaged

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(reader_module.torch.serialization, "load", fail)  # what the reader calls
    with pytest.raises(type(error)) as raised:
        CheckpointReader(whole)
    assert raised.value is error
    with pytest.raises(type(error)) as raised:
        detectors.load_state_dict(whole)
    assert raised.value is error


@pytest.mark.parametrize("error", NOT_DAMAGE, ids=NOT_DAMAGE_IDS)
def test_enhancer_file_memory_or_permissions_are_not_called_corrupt(damaged, monkeypatch, error):
    spandrel = pytest.importorskip("spandrel")
    from sadtalker import enhance

    whole, broken = damaged
    with pytest.raises(CorruptCheckpoint, match="download it again"):
        enhance._load_descriptor(broken[0])

    def fail(self, path):
        raise error

    monkeypatch.setattr(spandrel.ModelLoader, "load_state_dict_from_file", fail)
    with pytest.raises(type(error)) as raised:
        enhance._load_descriptor(whole)
    assert raised.value is error
