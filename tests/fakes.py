"""Fake official checkpoints, built from the fake-weight rule stated in shared/golden (our own builder).

Each tensor is a pure function of its full checkpoint key and shape, so any component can be built on its
own (cheap) or whole files can be written (for the loaders and the `check` command).

One departure from the shared rule: the 512 file holds the 256 file's keys and shapes, so by the rule both
would hold the same tensors and loading the wrong size would go unnoticed. Our 512 fakes seed each key with
"512:" + key (`FILE_SALT`). The golden 512 case was made with the 256 tensors: golden tests build it from
`fake_state(SAFETENSORS_256, ...)`.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

SHARED = Path(os.environ.get("SADTALKER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MANIFEST_COPY = Path(__file__).parent / "data" / "manifest.json"

SAFETENSORS_256 = "SadTalker_V0.0.2_256.safetensors"
SAFETENSORS_512 = "SadTalker_V0.0.2_512.safetensors"
MAPPING_70 = "mapping_00229-model.pth.tar"
MAPPING_73 = "mapping_00109-model.pth.tar"
FILE_SALT = {SAFETENSORS_512: "512:"}  # prefixed to every key's seed text; files not named here follow the rule


@lru_cache(maxsize=1)
def manifest() -> dict:
    """{file name: {key: [shape, dtype]}} for every official checkpoint file."""
    with open(MANIFEST_COPY) as f:
        return json.load(f)


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _drawn(key: str, shape: tuple[int, ...], salt: str = "") -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32((salt + key).encode("utf-8")))
    draw = rng.standard_normal(shape)
    if len(shape) <= 1:
        base = 1.0 if _leaf(key) == "weight" else 0.0
        return (base + 0.05 * draw).astype(np.float32)
    return (draw / math.sqrt(int(np.prod(shape[1:])))).astype(np.float32)


@lru_cache(maxsize=64)
def _spectral_vectors(weight_orig_key: str, weight_orig_shape: tuple[int, ...], salt: str = ""
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Top singular pair of the fake weight_orig reshaped to (out, -1).

    Through the eigenvectors of W W^T (out x out): the same vectors as a full SVD to ~1e-14 (the top singular
    values are well separated, see the golden README) and far faster than a full SVD on these shapes."""
    w = torch.from_numpy(_drawn(weight_orig_key, weight_orig_shape, salt).astype(np.float64).reshape(weight_orig_shape[0], -1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 512x512 eigh is ~50x slower multi-threaded when the cores are busy
    try:
        values, vectors = torch.linalg.eigh(w @ w.T)
    finally:
        torch.set_num_threads(threads)
    u = vectors[:, -1].numpy()
    v = (w.T @ vectors[:, -1]).numpy() / np.sqrt(values[-1].item())
    if u[int(np.argmax(np.abs(u)))] < 0:
        u, v = -u, -v
    return u.astype(np.float32), v.astype(np.float32)


def fake_value(entry: dict, key: str, salt: str = "") -> np.ndarray:
    shape = tuple(int(s) for s in entry[key][0])
    leaf = _leaf(key)
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf == "running_mean":
        return np.zeros(shape, np.float32)
    if leaf == "running_var":
        return np.ones(shape, np.float32)
    if leaf in ("weight_u", "weight_v"):
        owner = key.rsplit(".", 1)[0] + ".weight_orig"
        u, v = _spectral_vectors(owner, tuple(int(s) for s in entry[owner][0]), salt)
        return u if leaf == "weight_u" else v
    return _drawn(key, shape, salt)


def fake_state(file_name: str, prefix: str | None = None, strip: bool = True) -> dict[str, torch.Tensor]:
    """Fake tensors of one official file; with `prefix`, only that component's keys (prefix stripped)."""
    entry = manifest()[file_name]
    salt = FILE_SALT.get(file_name, "")
    out = {}
    for key in entry:
        if prefix is not None and not key.startswith(prefix + "."):
            continue
        name = key[len(prefix) + 1 :] if (prefix is not None and strip) else key
        out[name] = torch.from_numpy(fake_value(entry, key, salt))
    return out


def write_fake_file(file_name: str, path: Path, extra: dict | None = None) -> Path:
    """Write a fake official checkpoint in the official container format."""
    state = fake_state(file_name)
    path = Path(path)
    if file_name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        nested: dict = {}
        for key, value in state.items():
            top, rest = key.split(".", 1)
            nested.setdefault(top, {})[rest] = value
        nested["epoch"] = 0
        nested.update(extra or {})
        torch.save(nested, str(path))
    return path


def write_fake_checkpoint_dir(folder: Path, files=(SAFETENSORS_256, MAPPING_70, MAPPING_73)) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = folder / name
        if not target.exists():
            write_fake_file(name, target)
    return folder


def scaled_atol(atol: float, expected: np.ndarray) -> float:
    """A golden README's absolute tolerance for arrays of order one, scaled by the array's largest magnitude.

    With fake weights the mapping net's outputs for fr256_still reach |x| ~ 100 (and so do the degrees and
    keypoints made from them). The goldens were made on an AMD EPYC; on an Intel Xeon (AMX) the BLAS blocks the
    same sums differently and the outputs differ by up to 5e-7 of the array's largest value (4.2e-5 at ~80),
    measured, which a fixed 1e-5 does not allow however exact the re-implementation is.
    """
    return atol * max(1.0, float(np.abs(expected).max()))
