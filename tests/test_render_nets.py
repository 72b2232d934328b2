"""Renderer networks against the official keys and the cheap golden arrays (mapping outputs, keypoints, volume).

The full generator forward (intermediates, logits, frames) is checked once per case in test_render.py.
"""

from __future__ import annotations

import functools

import fakes
import numpy as np
import pytest
import torch

from sadtalker.nets.blocks import SpectralNormConv2d, make_coordinate_grid
from sadtalker.nets.generator import OcclusionAwareSPADEGenerator, keypoint_gaussians
from sadtalker.nets.keypoints import KPDetector
from sadtalker.nets.mapping import MappingNet

CASES = ("fr256_nonstill", "fr256_still", "fr256_still_small", "fr512_nonstill_1f")
RENDERER_FILES = (fakes.SAFETENSORS_256, fakes.SAFETENSORS_512)

# Official sigma = u . (W v) of the 18 spectral-norm convs with the fake weights (shared/golden/facerender README,
# "Spectral-norm sigma with revision 2"), given there to 4 decimals.
OFFICIAL_SIGMA = {
    **{f"G_middle_{i}.conv_{j}": s for i, pair in enumerate([(1.3275, 1.3335), (1.3256, 1.3303), (1.3251, 1.3370),
                                                             (1.3355, 1.3274), (1.3303, 1.3314), (1.3231, 1.3229)])
       for j, s in enumerate(pair)},
    "up_0.conv_0": 1.2357, "up_0.conv_1": 1.3229, "up_0.conv_s": 1.6919,
    "up_1.conv_0": 1.1561, "up_1.conv_1": 1.3298, "up_1.conv_s": 1.4875,
}


# Building the fake generator state is slow (spectral-norm SVDs): build each component once per module.
fake_state = functools.cache(fakes.fake_state)


@pytest.fixture(scope="module", autouse=True)
def _free_fake_states():
    yield
    fake_state.cache_clear()


def _manifest_shapes(file_name: str, prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    entry = fakes.manifest()[file_name]
    return {key[len(prefix) + 1:]: (tuple(shape), dtype) for key, (shape, dtype) in entry.items()
            if key.startswith(prefix + ".")}


def _state_shapes(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {key: (tuple(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in
            module.state_dict().items()}


@pytest.mark.parametrize("file_name", RENDERER_FILES)
@pytest.mark.parametrize(("prefix", "build"), [("kp_extractor", KPDetector),
                                               ("generator", OcclusionAwareSPADEGenerator)])
def test_state_dict_matches_official_keys(file_name, prefix, build):
    module = build()
    assert _state_shapes(module) == _manifest_shapes(file_name, prefix)
    if file_name == fakes.SAFETENSORS_256:
        module.load_state_dict(fake_state(file_name, prefix=prefix), strict=True)


@pytest.mark.parametrize(("file_name", "coeff_nc"), [(fakes.MAPPING_70, 70), (fakes.MAPPING_73, 73)])
def test_mapping_state_dict_matches_official_keys(file_name, coeff_nc):
    module = MappingNet(coeff_nc=coeff_nc)
    assert _state_shapes(module) == _manifest_shapes(file_name, "mapping")
    module.load_state_dict(fake_state(file_name, prefix="mapping"), strict=True)


# The 512 file has the 256 file's keys and shapes, so its fake tensors are the same (the golden 512 case used
# them too): one set of fake networks serves both sizes.

@pytest.fixture(scope="module")
def generator() -> OcclusionAwareSPADEGenerator:
    module = OcclusionAwareSPADEGenerator()
    module.load_state_dict(fake_state(fakes.SAFETENSORS_256, prefix="generator"), strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def kp_detector() -> KPDetector:
    module = KPDetector()
    module.load_state_dict(fake_state(fakes.SAFETENSORS_256, prefix="kp_extractor"), strict=True)
    return module.eval()


def test_spectral_norm_uses_stored_vectors(generator):
    layers = {name.removeprefix("decoder."): module for name, module in generator.named_modules()
              if isinstance(module, SpectralNormConv2d)}
    assert set(layers) == set(OFFICIAL_SIGMA)
    for name, layer in layers.items():
        with torch.no_grad():
            weight = layer.effective_weight()
        ratio = (layer.weight_orig / weight).flatten()
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6), name
        assert abs(ratio[0].item() - OFFICIAL_SIGMA[name]) < 6e-5, name
        # Fake rule 6 makes (u, v) the top singular pair of weight_orig, so the effective weight maps v to u.
        mapped = weight.reshape(weight.shape[0], -1).double() @ layer.weight_v.double()
        torch.testing.assert_close(mapped, layer.weight_u.double(), atol=1e-6, rtol=0)


def test_folded_spectral_norm_is_the_same_layer_and_a_load_unfolds(generator):
    import copy

    layer = copy.deepcopy(generator.decoder.G_middle_0.conv_0)
    x = torch.randn(1, layer.weight_orig.shape[1], 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = layer(x)
        raw = copy.deepcopy(layer.state_dict())
        layer.fold_()
        assert layer.folded and torch.equal(layer(x), before)  # the same float32 weights, computed once
        # the folded state dict still describes the same layer (its sigma is 1 to rounding)
        again = copy.deepcopy(layer)
        again.load_state_dict(layer.state_dict())
        assert not again.folded
        torch.testing.assert_close(again(x), before, atol=1e-5, rtol=1e-5)
        layer.load_state_dict(raw)  # the checkpoint's weights: normalised again per call
        assert not layer.folded and torch.equal(layer(x), before)


def test_coordinate_grid_and_gaussians(golden):
    data = golden("kp_transform_unit")
    grid = make_coordinate_grid(16, 64, 64)
    np.testing.assert_array_equal(grid[[0, 15]][:, [0, 63]][:, :, [0, 63]].numpy(),
                                  data["coordinate_grid_16x64x64_corner"])
    gaussians = keypoint_gaussians(torch.from_numpy(data["kp_canonical"][:1]), grid)
    np.testing.assert_allclose(gaussians.double().sum(dim=(2, 3, 4)).numpy(), data["kp2gaussian_b0_16x64x64_sum"],
                               rtol=1e-6)
    np.testing.assert_allclose(gaussians[0, 0, 8].numpy(), data["kp2gaussian_b0_k0_depth8"], atol=1e-6)


def _source_image(data: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(data["source_image_u8"].astype(np.float32).transpose(2, 0, 1)[None] / 255.0)


@pytest.mark.parametrize("case", CASES)
def test_kp_detector_matches_official(golden, kp_detector, case):
    data = golden(case)
    with torch.inference_mode():
        kp = kp_detector(_source_image(data))
    np.testing.assert_allclose(kp[0].numpy(), data["kp_canonical"][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_mapping_matches_official(golden, case):
    """float32 in the official layout (the source batch, then one call per step over the batch rows): the README's
    atol 1e-5 on every output (logits included), scaled by the array's magnitude (fakes.scaled_atol)."""
    data = golden(case)
    coeff_nc = data["source_semantics"].shape[1]
    mapping = MappingNet(coeff_nc=coeff_nc)
    file_name = fakes.MAPPING_70 if coeff_nc == 70 else fakes.MAPPING_73
    mapping.load_state_dict(fake_state(file_name, prefix="mapping"), strict=True)
    mapping.eval()  # float32, as the Renderer runs it
    windows = data["target_semantics_list"]  # (batch rows, steps, C, 27)
    with torch.inference_mode():
        source = mapping(torch.from_numpy(data["source_semantics"]))
        steps = [mapping(torch.from_numpy(windows[:, step])) for step in range(windows.shape[1])]
    for name in ("yaw", "pitch", "roll", "t", "exp"):
        expected_source = data[f"he_source_{name}"]
        np.testing.assert_allclose(source[name].numpy(), expected_source, atol=fakes.scaled_atol(1e-5, expected_source),
                                   rtol=0, err_msg=name)
        driving = torch.stack([step[name] for step in steps], 1).reshape(-1, steps[0][name].shape[-1])
        expected = data[f"he_driving_{name}"].reshape(len(driving), -1)
        np.testing.assert_allclose(driving.numpy(), expected, atol=fakes.scaled_atol(1e-5, expected), rtol=0,
                                   err_msg=name)


@pytest.mark.parametrize("case", ["fr256_nonstill", "fr512_nonstill_1f"])
def test_source_volume_matches_official(golden, generator, case):
    data = golden(case)
    with torch.inference_mode():
        volume = generator.encode_source(_source_image(data))
    size = data["source_image_u8"].shape[0]
    assert volume.shape == (1, 32, 16, size // 4, size // 4)
    if "g0_feature_3d_depth8" in data:
        np.testing.assert_allclose(volume[0, :, 8].numpy(), data["g0_feature_3d_depth8"], atol=1e-4, rtol=0)
    batch = int(data["batch_size"])  # the official sum covers every (identical) batch row
    np.testing.assert_allclose(batch * volume.double().sum().item(), data["g0_feature_3d_sum"][0], rtol=1e-6)


# -- the CPU fast paths, each against the plain expression it replaces (1e-5) -----------------------------------

def test_fused_spade_modulation_equals_instance_norm_expression():
    from sadtalker.nets.blocks import instance_norm_modulation, modulate_instance_norm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, 16, generator=gen) * 3 + 1
    gamma, beta = torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 8, 16, 16, generator=gen)
    expected = instance_norm_modulation(x, gamma, beta)
    got = modulate_instance_norm(x, gamma.clone(), beta.clone())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 2])
def test_half_precision_spade_modulation_is_as_close_as_its_inputs_allow(dtype, batch):
    from sadtalker.nets.blocks import instance_norm_modulation, modulate_instance_norm

    gen = torch.Generator().manual_seed(batch)
    x, gamma, beta = (torch.randn(batch, 8, 32, 32, generator=gen) * scale + shift
                      for scale, shift in ((3, 1), (0.5, 0), (0.5, 0)))
    x, gamma, beta = (t.to(dtype) for t in (x, gamma, beta))
    exact = instance_norm_modulation(x.double(), gamma.double(), beta.double())
    got = modulate_instance_norm(x.contiguous(memory_format=torch.channels_last), gamma.clone(), beta.clone())
    assert got.dtype == dtype
    # one rounding of the result, plus that of (1 + gamma) and of the normalised x: a few units in the last place
    unit = torch.finfo(dtype).eps
    assert (got.double() - exact).abs().max().item() <= 2 * unit * exact.abs().max().item()


def test_composed_shortcut_beta_equals_the_plain_learned_shortcut():
    from sadtalker.nets.blocks import SPADEResBlock, set_fast_paths

    torch.manual_seed(0)
    block = SPADEResBlock(in_channels=64, out_channels=16, label_channels=32).eval()
    x, seg = torch.randn(2, 64, 12, 12) * 2 + 0.3, torch.randn(2, 32, 12, 12)
    with torch.no_grad():
        plain = set_fast_paths(block, False)(x, seg)
        fast = set_fast_paths(block, True)(x, seg)
    torch.testing.assert_close(fast, plain, atol=1e-5 * plain.abs().max().item(), rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 3])
def test_phase_decomposed_conv_equals_conv_of_upsampled(scale, groups):
    from sadtalker.nets.blocks import relu_conv3x3_of_upsampled

    gen = torch.Generator().manual_seed(scale * 10 + groups)
    x = torch.randn(2, 5, 7, 6, generator=gen)
    weight = torch.randn(4 * groups, 5, 3, 3, generator=gen) * 0.3
    bias = torch.randn(4 * groups, generator=gen)
    upsampled = torch.nn.functional.interpolate(x, scale_factor=float(scale), mode="nearest")
    expected = torch.relu(torch.nn.functional.conv2d(upsampled, weight, bias, padding=1))
    maps = relu_conv3x3_of_upsampled(x, weight, bias, scale, groups=groups)
    assert len(maps) == groups
    torch.testing.assert_close(torch.cat(maps, 1), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", [3, 7])
def test_single_output_conv_equals_conv2d(kernel):
    from sadtalker.nets.generator import single_output_conv2d

    gen = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 40, 12, 9, generator=gen)
    weight, bias = torch.randn(1, 40, kernel, kernel, generator=gen) * 0.1, torch.randn(1, generator=gen)
    expected = torch.nn.functional.conv2d(x, weight, bias, padding=kernel // 2)
    torch.testing.assert_close(single_output_conv2d(x, weight, bias), expected, atol=1e-5, rtol=0)


def test_fast_paths_switch_reaches_every_layer_and_the_plain_forward_agrees(small_generator_inputs):
    from sadtalker.nets.blocks import set_fast_paths

    generator, volume, kp_source, kp_driving = small_generator_inputs
    switched = [m for m in generator.modules() if hasattr(m, "fast_paths")]
    # dense motion, decoder, the SPADE layers of the 8 blocks, the 8 blocks (their learned shortcut)
    assert len(switched) == 2 + 2 * 6 + 3 + 3 + 8
    with torch.inference_mode():
        fast = generator.animate(volume, kp_source, kp_driving, return_intermediates=True)
        set_fast_paths(generator, False)
        assert not any(m.fast_paths for m in switched)
        plain = generator.animate(volume, kp_source, kp_driving, return_intermediates=True)
        set_fast_paths(generator, True)
    # The logits sum many more terms than the unit cases above: the same 1e-5 relative to their scale.
    scale = plain["logits"].abs().max().item()
    torch.testing.assert_close(fast["logits"], plain["logits"], atol=1e-5 * max(scale, 1.0), rtol=0)
    torch.testing.assert_close(fast["occlusion_map"], plain["occlusion_map"], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def small_generator_inputs(generator):
    """The fake generator on a 128x128 source (the smallest it takes: 1/4 of the work of a 256 frame)."""
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 128, 128, generator=gen)
    kp_source = torch.rand(2, 15, 3, generator=gen) * 1.6 - 0.8
    kp_driving = kp_source + 0.05 * torch.randn(2, 15, 3, generator=gen)
    with torch.inference_mode():
        volume = generator.encode_source(image)
    return generator, volume, kp_source, kp_driving


# fp16 convolutions have no fast CPU kernels (minutes here): that case is `slow`; on CUDA it is the fast mode
@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_half_precision_generator_keeps_coordinates_float32(small_generator_inputs, dtype):
    """bf16 is the CPU fast mode, fp16 the CUDA one (its casts are the same code, checked here on CPU).

    PSNR against the float32 frame, fake weights (a proxy for real ones): measured 44-45 dB for bf16 at 256
    (`bench --check-quality`), the goal is 36 dB; fp16 has 3 more mantissa bits.
    """
    import copy
    import math

    from sadtalker.nets.generator import HALF_PRECISION_PARTS

    generator, volume, kp_source, kp_driving = small_generator_inputs
    half = copy.deepcopy(generator).set_compute_dtype(dtype)
    for path in HALF_PRECISION_PARTS:
        assert all(p.dtype == dtype for p in half.get_submodule(path).parameters()), path
    assert half.dense_motion_network.compress.weight.dtype == torch.float32
    with torch.inference_mode():
        exact = generator.animate(volume, kp_source, kp_driving, return_intermediates=True)
        got = half.animate(volume, kp_source, kp_driving, return_intermediates=True)
    for name in ("prediction", "logits", "deformation", "occlusion_map", "mask"):
        assert got[name].dtype == torch.float32, name
    mse = (got["prediction"] - exact["prediction"]).square().mean().item()
    assert 10 * math.log10(1 / mse) >= 36.0
