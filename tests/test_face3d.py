"""face3d ReconNet (ResNet-50 -> 257) and the source's 73-coefficient row against the official code (golden)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fakes
from sadtalker.face.reconstruct import image_to_input, source_coefficients, split_coefficients
from sadtalker.nets.face3d import ReconNet

COEFF_ATOL = 1e-5


@pytest.fixture(scope="module")
def recon_net() -> ReconNet:
    net = ReconNet()
    net.load_state_dict(fakes.fake_state(fakes.SAFETENSORS_256, prefix="face_3drecon"), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def face3d(golden) -> dict[str, np.ndarray]:
    return golden("face3d_recon")


def test_keys_are_the_official_ones():
    official = {key.removeprefix("face_3drecon.") for key in fakes.manifest()[fakes.SAFETENSORS_256]
                if key.startswith("face_3drecon.")}
    assert set(ReconNet().state_dict()) == official


def test_direct_coefficients_match_official(recon_net, face3d):
    images = image_to_input(face3d["a_image_u8"])
    with torch.no_grad():
        feature = recon_net.features(images).numpy()
        coeffs = recon_net(images).numpy()
    assert coeffs.shape == (1, 257)
    np.testing.assert_allclose(feature, face3d["a_backbone_feature"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(coeffs, face3d["a_coeffs_257"], rtol=0, atol=COEFF_ATOL)
    for name, part in split_coefficients(coeffs).items():
        np.testing.assert_allclose(part, face3d[f"a_{name}"], rtol=0, atol=COEFF_ATOL, err_msg=name)


def test_source_row_matches_official(recon_net, face3d):
    row = source_coefficients(recon_net, face3d["b_aligned_u8"], face3d["b_trans_params"])
    assert row.shape == (1, 73) and row.dtype == np.float32
    np.testing.assert_allclose(row, face3d["b_coeff_3dmm_73"], rtol=0, atol=COEFF_ATOL)
    np.testing.assert_array_equal(row[0, 70:], face3d["b_trans_params"][2:])


def test_split_rejects_wrong_width():
    with pytest.raises(ValueError):
        split_coefficients(np.zeros((1, 256), np.float32))
