"""Precision: the option, how it resolves per device, and the model store's one-precision-per-size renderer.

The numbers of the half-precision generator itself are checked in test_render_nets.py (it shares the fake
networks built there); the speed is measured by `python -m sadtalker bench`, never by a test.
"""

from __future__ import annotations

import pytest
import torch

from sadtalker.errors import InvalidInput
from sadtalker.options import GenerateOptions, option_spec
from sadtalker.render import cpu_has_fast_bfloat16, resolve_precision


def test_precision_option_is_an_advanced_choice_defaulting_to_exact_fp32():
    spec = option_spec("precision")
    assert (spec.kind, spec.default, spec.advanced, spec.flag) == ("choice", "fp32", True, "--precision")
    assert spec.choices == ("fp32", "bf16", "fp16", "auto")
    options = GenerateOptions(precision="bf16")
    assert GenerateOptions.from_dict(options.to_dict()) == options
    with pytest.raises(InvalidInput) as caught:
        GenerateOptions(precision="fp8")
    assert caught.value.option == "precision"


def test_cpu_precisions_resolve_on_the_evidence():
    assert resolve_precision("fp32", "cpu") == torch.float32
    with pytest.raises(InvalidInput) as caught:
        resolve_precision("fp16", "cpu")  # no fast CPU kernels: refused, not silently run in another dtype
    assert caught.value.option == "precision"
    if cpu_has_fast_bfloat16():
        assert resolve_precision("bf16", "cpu") == torch.bfloat16
        assert resolve_precision("auto", "cpu") == torch.bfloat16
    else:
        assert resolve_precision("auto", "cpu") == torch.float32
        with pytest.raises(InvalidInput):
            resolve_precision("bf16", "cpu")


def test_cpu_bf16_detection_follows_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    expected = torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert cpu_has_fast_bfloat16() == expected


@pytest.mark.skipif(not cpu_has_fast_bfloat16(), reason="this CPU has no bfloat16 instructions")
def test_model_store_holds_one_precision_per_size_and_reloads_what_it_released(fake_checkpoints):
    from sadtalker.checkpoints import files
    from sadtalker.checkpoints.paths import ModelPaths
    from sadtalker.pipeline import ModelStore

    store = ModelStore(ModelPaths(fake_checkpoints))
    fast = store.renderer(256, "crop", "bf16")
    assert fast.compute_dtype == torch.bfloat16
    assert fast.generator.dense_motion_network.compress.weight.dtype == torch.float32  # coordinates stay fp32
    assert fast.generator.first.conv.weight.dtype == torch.float32  # the source encoder runs once: fp32
    assert fast.mapping.fc_exp.weight.dtype == torch.float32  # float32 like the official mapping net
    assert store.renderer(256, "crop", "auto") is fast  # auto is bf16 on this CPU: the same renderer
    store.release_once_per_video()
    assert fast.kp_detector is None
    assert store.renderer(256, "crop", "bf16").kp_detector is not None  # attached again when asked for
    exact = store.renderer(256, "crop", "fp32")
    assert exact.compute_dtype == torch.float32
    assert [k for k in store._cache if k[0] == "renderer"] == [
        ("renderer", 256, files.MAPPING_CROP.name, torch.float32)]
