"""Face enhancers through spandrel, with random-weight files in the official key layout.

Each random file is built from spandrel's own network class (the official key names and shapes) and saved the
way the official release is (`{"params_ema": state_dict}`), so loading exercises the real detection path.
A GFPGAN forward pass at 512x512 costs ~5 s on 2 CPU cores, so the resize/normalise/blend arithmetic is checked
with cheap stand-in networks and the real network runs once per default test run.
"""

from __future__ import annotations

import math
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

with warnings.catch_warnings():  # spandrel's import trips torch's torch.jit.script deprecation notice
    warnings.simplefilter("ignore", FutureWarning)
    pytest.importorskip("spandrel", reason="face enhancement needs spandrel (and torchvision)")
    pytest.importorskip("spandrel_extra_arches", reason="CodeFormer needs spandrel-extra-arches")

from sadtalker import enhance  # noqa: E402
from sadtalker.enhance import ENHANCERS, FaceEnhancer, MissingDependency, SpandrelEnhancer  # noqa: E402
from sadtalker.errors import (  # noqa: E402
    CorruptCheckpoint, ImageError, InvalidInput, MissingWeights, UnsupportedCheckpoint)
from sadtalker.render import cpu_has_fast_bfloat16  # noqa: E402


def random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random tensors for every key of `model` (built on the meta device: no init cost)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        if not value.is_floating_point():
            state[key] = torch.zeros(shape, dtype=value.dtype)
            continue
        draw = torch.randn(shape, generator=generator)
        if len(shape) <= 1:
            state[key] = (1.0 if key.endswith("weight") else 0.0) + 0.05 * draw
        else:
            state[key] = draw / math.sqrt(math.prod(shape[1:]))
    return state


def save_official_layout(model_factory, path) -> str:
    with torch.device("meta"):
        model = model_factory()
    torch.save({"params_ema": random_state(model)}, path)
    return str(path)


def gfpgan_v14():
    from spandrel.architectures.GFPGAN import GFPGAN

    # GFPGAN v1.4 = GFPGANv1Clean with the official inference settings (channel multiplier 2, SFT half).
    return GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                  num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)


def codeformer():
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    return CodeFormer(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                      connect_list=["32", "64", "128", "256"], fix_modules=["quantize", "generator"])


def restoreformer():
    from spandrel.architectures.RestoreFormer import RestoreFormer

    return RestoreFormer()


def small_esrgan():
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(num_filters=16, num_blocks=1, scale=4)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("enhancers")


@pytest.fixture(scope="module")
def gfpgan(weights_dir) -> SpandrelEnhancer:
    path = save_official_layout(gfpgan_v14, weights_dir / ENHANCERS["gfpgan"])
    return SpandrelEnhancer(path)


def smooth_face(size: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (bilinear resizes of it are nearly lossless) standing in for a face crop."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(30, 225, (1, 3, 8, 8)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


# -- loading ---------------------------------------------------------------------------------------------------


def test_official_file_names():
    assert ENHANCERS == {"gfpgan": "GFPGANv1.4.pth", "restoreformer": "RestoreFormer.pth",
                         "codeformer": "codeformer.pth"}


def test_gfpgan_file_loads_as_gfpgan(gfpgan):
    assert gfpgan.architecture == "GFPGAN"
    assert isinstance(gfpgan, FaceEnhancer)
    assert not gfpgan.model.training
    assert gfpgan.dtype == torch.float32


@pytest.mark.parametrize("name, factory, architecture", [("codeformer", codeformer, "CodeFormer"),
                                                         ("restoreformer", restoreformer, "RestoreFormer")])
def test_other_face_restorers_load(tmp_path, name, factory, architecture):
    save_official_layout(factory, tmp_path / ENHANCERS[name])
    enhancer = SpandrelEnhancer.from_folder(name, tmp_path, fidelity=0.7)
    assert enhancer.architecture == architecture
    assert enhancer.fidelity == 0.7


def test_non_face_restorer_files_are_rejected(tmp_path):
    esrgan = save_official_layout(small_esrgan, tmp_path / "RealESRGAN_x4plus.pth")
    with pytest.raises(UnsupportedCheckpoint, match="ESRGAN"):
        SpandrelEnhancer(esrgan)

    unknown = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": {"conv.weight": torch.randn(4, 3, 3, 3)}}, unknown)
    with pytest.raises(UnsupportedCheckpoint, match="not a face restorer"):
        SpandrelEnhancer(unknown)

    truncated = tmp_path / "RestoreFormer.pth"
    truncated.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(CorruptCheckpoint):
        SpandrelEnhancer(truncated)

    with torch.device("meta"):
        layout = gfpgan_v14()
    misfit = random_state(layout)
    key = "stylegan_decoder.to_rgbs.3.modulated_conv.weight"
    misfit[key] = torch.zeros(*[d + 1 for d in misfit[key].shape])
    torch.save({"params_ema": misfit}, tmp_path / "misfit.pth")
    with pytest.raises(CorruptCheckpoint, match="do not fit their network"):
        SpandrelEnhancer(tmp_path / "misfit.pth")

    with pytest.raises(MissingWeights, match="GFPGANv1.4.pth"):
        SpandrelEnhancer.from_folder("gfpgan", tmp_path / "empty")
    with pytest.raises(InvalidInput, match="unknown face enhancer"):
        SpandrelEnhancer.from_folder("beautify", tmp_path)


def test_missing_spandrel_names_the_package(monkeypatch, tmp_path):
    enhance._spandrel.cache_clear()
    monkeypatch.setitem(sys.modules, "spandrel", None)  # makes `import spandrel` raise ImportError
    try:
        with pytest.raises(MissingDependency, match="pip install spandrel"):
            SpandrelEnhancer(tmp_path / "GFPGANv1.4.pth")
    finally:
        enhance._spandrel.cache_clear()


def test_dtype_falls_back_to_float32_where_it_would_not_work_or_be_slow(monkeypatch):
    # spandrel marks GFPGAN/CodeFormer/RestoreFormer as unstable in float16 and fine in bfloat16; on CPU only
    # GFPGAN's bf16 path was measured (and only CPUs with bf16 instructions run it faster than float32)
    from sadtalker import render

    def restorer(architecture):
        return SimpleNamespace(supports_half=False, supports_bfloat16=True,
                               architecture=SimpleNamespace(id=architecture))

    gfpgan, codeformer = restorer("GFPGAN"), restorer("CodeFormer")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert enhance._usable_dtype(gfpgan, torch.float16, cuda) == torch.float32
    assert enhance._usable_dtype(gfpgan, torch.bfloat16, cuda) == torch.bfloat16
    assert enhance._usable_dtype(codeformer, torch.bfloat16, cuda) == torch.bfloat16
    assert enhance._usable_dtype(gfpgan, torch.float32, cpu) == torch.float32
    monkeypatch.setattr(render, "cpu_has_fast_bfloat16", lambda: True)
    assert enhance._usable_dtype(gfpgan, torch.bfloat16, cpu) == torch.bfloat16
    assert enhance._usable_dtype(codeformer, torch.bfloat16, cpu) == torch.float32
    assert enhance._usable_dtype(gfpgan, torch.float16, cpu) == torch.float32
    monkeypatch.setattr(render, "cpu_has_fast_bfloat16", lambda: False)
    assert enhance._usable_dtype(gfpgan, torch.bfloat16, cpu) == torch.float32


# -- the arithmetic around the network, with stand-in networks -------------------------------------------------


def test_network_sees_512_rgb_in_minus_one_to_one_and_output_is_mapped_back(gfpgan, monkeypatch):
    seen = []

    def invert(faces):  # -x in [-1, 1] is 255 - x in pixels: only right if both mappings are the [-1, 1] ones
        seen.append(faces)
        return -faces

    monkeypatch.setattr(gfpgan, "_forward", invert)
    face = np.zeros((512, 512, 3), np.uint8)
    face[..., 0] = 255  # pure red
    face[:10] = 0
    out = gfpgan.restore(face)
    assert seen[0].shape == (1, 3, 512, 512)
    assert seen[0][0, 0, 100, 100] == 1.0 and seen[0][0, 1, 100, 100] == -1.0  # red channel first, in [-1, 1]
    assert np.array_equal(out, 255 - face)


def test_faces_keep_their_size_and_strength_blends(gfpgan, monkeypatch):
    monkeypatch.setattr(gfpgan, "_forward", lambda faces: -faces)
    face = smooth_face(256)
    full = gfpgan.restore(face, strength=1.0)
    half = gfpgan.restore(face, strength=0.5)
    assert full.shape == half.shape == (256, 256, 3) and full.dtype == np.uint8
    assert np.abs(full.astype(int) - (255 - face.astype(int))).max() <= 3  # 256 → 512 → 256 is nearly lossless
    midpoint = (face.astype(float) + full.astype(float)) / 2
    assert np.abs(half - midpoint).max() <= 2.0
    assert np.array_equal(gfpgan.restore(face, strength=0.0), face)

    batch = gfpgan.restore_batch([face, smooth_face(100, seed=1), face], strength=1.0)
    assert [item.shape for item in batch] == [(256, 256, 3), (100, 100, 3), (256, 256, 3)]
    assert np.array_equal(batch[0], full) and np.array_equal(batch[2], full)

    with pytest.raises(InvalidInput, match="strength"):
        gfpgan.restore(face, strength=1.5)
    with pytest.raises(ImageError, match="uint8"):
        gfpgan.restore(face.astype(np.float32))


def test_strength_zero_returns_the_input_without_running_the_network(gfpgan, monkeypatch):
    def fail(faces):
        raise AssertionError("the network should not run at strength 0")

    monkeypatch.setattr(gfpgan, "_forward", fail)
    monkeypatch.setattr(gfpgan, "strength", 0.0)
    face = smooth_face(256)
    out = gfpgan.restore(face)
    assert np.array_equal(out, face) and out is not face


# -- the real network --------------------------------------------------------------------------------------------


def test_gfpgan_restores_a_256_face(gfpgan):
    face = smooth_face(256)
    out = gfpgan.restore(face)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - face).mean() > 1.0  # the (random) network did change the face
    assert 0 < out.std() and np.isfinite(out).all()


@pytest.mark.skipif(not cpu_has_fast_bfloat16(),
                    reason="this CPU has no bf16 instructions: GFPGAN stays float32 here")
def test_gfpgan_in_bfloat16_runs_its_decoder_in_bf16_and_stays_close_to_float32(gfpgan):
    fast = SpandrelEnhancer(gfpgan.path, dtype=torch.bfloat16)
    assert fast.dtype == torch.bfloat16
    dtypes = {name: next(getattr(fast.model, name).parameters()).dtype for name, _ in fast.model.named_children()}
    assert dtypes["stylegan_decoder"] == dtypes["condition_scale"] == dtypes["condition_shift"] == torch.bfloat16
    assert dtypes["conv_body_first"] == dtypes["conv_body_down"] == dtypes["conv_body_up"] == torch.float32
    face = smooth_face(256, seed=5)
    exact, restored = gfpgan.restore(face), fast.restore(face)
    assert restored.shape == face.shape and restored.dtype == np.uint8
    mse = np.mean((exact.astype(float) - restored.astype(float)) ** 2)
    # measured 37.2 dB on a 256 portrait crop with these random weights (the whole network in bf16: 29.6 dB)
    assert 0 < mse and 10 * np.log10(255**2 / mse) >= 35.0
    assert np.array_equal(fast.restore(face), restored)  # stored noise: the same face gives the same pixels
    batch = fast.restore_batch([face, smooth_face(200, seed=6)])  # channels-last maps through a batch of two
    assert [item.shape for item in batch] == [(256, 256, 3), (200, 200, 3)]
    assert np.abs(batch[0].astype(int) - restored).max() <= 4  # bf16 rounding differs with the batch layout


@pytest.mark.slow
def test_gfpgan_matches_the_webui_call_and_is_deterministic(gfpgan):
    """Reference: the WebUI's GFPGAN call (RGB normalised to [-1, 1], `net(x, return_rgb=False)[0]`, read back
    from [-1, 1]) with the stored noise maps; two runs and a batch of two give the same pixels."""
    face = smooth_face(512, seed=3)
    x = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        y = gfpgan.model((x - 0.5) / 0.5, return_rgb=False, randomize_noise=False)[0]
    reference = (((y.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    batch = gfpgan.restore_batch([face, face])
    assert np.abs(batch[0].astype(int) - reference).max() <= 1
    assert np.array_equal(batch[0], batch[1])


@pytest.mark.slow
def test_codeformer_and_restoreformer_restore(tmp_path):
    for name, factory in (("codeformer", codeformer), ("restoreformer", restoreformer)):
        save_official_layout(factory, tmp_path / ENHANCERS[name])
        out = SpandrelEnhancer.from_folder(name, tmp_path).restore(smooth_face(200))
        assert out.shape == (200, 200, 3) and out.dtype == np.uint8
