from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # `import fakes` from any test
GOLDEN = TESTS / "data" / "golden"


@pytest.fixture(scope="session")
def golden():
    """Load one trimmed golden case of the official code: golden('fr256_still') -> dict of arrays."""

    def load(name: str) -> dict[str, np.ndarray]:
        with np.load(GOLDEN / f"{name}.npz") as z:
            return {k: z[k] for k in z.files}

    return load


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def fake_checkpoints(tmp_path_factory) -> Path:
    """A folder with fake official files (256 safetensors, both mappings), written once per session."""
    import fakes

    return fakes.write_fake_checkpoint_dir(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def models_dir(fake_checkpoints, tmp_path_factory) -> Path:
    """The fake files plus a fake 512 file whose tensors differ from the 256 file's (see fakes.FILE_SALT)."""
    import os

    import fakes

    folder = tmp_path_factory.mktemp("models")
    for item in fake_checkpoints.iterdir():
        if item.is_file():
            os.link(item, folder / item.name)
    return fakes.write_fake_checkpoint_dir(folder, files=(fakes.SAFETENSORS_512,))
