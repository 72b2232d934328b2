"""Official checkpoint files: our networks have exactly their keys and shapes, load strictly, and bad files fail by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import fakes
from sadtalker.checkpoints.components import identify, load_component
from sadtalker.checkpoints.reader import CheckpointReader
from sadtalker.checkpoints.check import check_folder
from sadtalker.checkpoints.components import component
from sadtalker.errors import CorruptCheckpoint, MissingWeights, UnsupportedCheckpoint

SAFETENSORS_COMPONENTS = {"kp_extractor": "kp_extractor", "generator": "generator", "audio2exp": "audio2exp",
                          "audio2pose": "audio2pose", "face_3drecon": "face_3drecon"}
LEGACY = {"epoch_20.pth": ("face_3drecon", "net_recon"), "auido2exp_00300-model.pth": ("audio2exp", "model"),
          "auido2pose_00140-model.pth": ("audio2pose", "model")}


def _manifest_shapes(file_name: str, root: str) -> dict[str, tuple[int, ...]]:
    lead = root + "."
    return {k[len(lead):]: tuple(v[0]) for k, v in fakes.manifest()[file_name].items() if k.startswith(lead)}


def _our_shapes(component_id: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in component(component_id).build().state_dict().items()}


@pytest.mark.parametrize("file_name", [fakes.SAFETENSORS_256, fakes.SAFETENSORS_512])
@pytest.mark.parametrize("component_id", list(SAFETENSORS_COMPONENTS))
def test_networks_match_the_released_safetensors_layout(file_name, component_id):
    assert _our_shapes(component_id) == _manifest_shapes(file_name, SAFETENSORS_COMPONENTS[component_id])


@pytest.mark.parametrize(("file_name", "component_id"), [(fakes.MAPPING_70, "mapping70"), (fakes.MAPPING_73, "mapping73")])
def test_mapping_nets_match_the_released_mapping_files(file_name, component_id):
    assert _our_shapes(component_id) == _manifest_shapes(file_name, "mapping")


@pytest.mark.parametrize("file_name", sorted(LEGACY))
def test_networks_match_the_legacy_pickles(file_name):
    component_id, root = LEGACY[file_name]
    assert _our_shapes(component_id) == _manifest_shapes(file_name, root)


def test_legacy_renderer_pickle_holds_our_generator_and_keypoint_layout():
    name = "facevid2vid_00189-model.pth.tar"
    assert _our_shapes("generator") == _manifest_shapes(name, "generator")
    assert _our_shapes("kp_extractor") == _manifest_shapes(name, "kp_detector")


def test_safetensors_file_is_recognised_by_its_keys_and_loads_every_component(fake_checkpoints):
    renamed = fake_checkpoints / "anything.safetensors"
    if not renamed.exists():
        os.link(fake_checkpoints / fakes.SAFETENSORS_256, renamed)
    reader = CheckpointReader(renamed)
    assert set(identify(reader)) == set(SAFETENSORS_COMPONENTS)
    for component_id, prefix in SAFETENSORS_COMPONENTS.items():
        model = load_component(reader, component_id)
        expected = fakes.fake_state(fakes.SAFETENSORS_256, prefix=prefix)
        got = model.state_dict()
        for key in list(expected)[:: max(1, len(expected) // 25)]:  # a spread of tensors, each compared exactly
            assert torch.equal(got[key], expected[key]), f"{component_id}.{key}"


def test_safetensors_reader_reads_only_the_requested_component(fake_checkpoints):
    reader = CheckpointReader(fake_checkpoints / fakes.SAFETENSORS_256)
    tensors = reader.tensors("audio2exp")
    assert len(tensors) == 93 and all(not k.startswith("audio2exp.") for k in tensors)


@pytest.mark.parametrize(("file_name", "component_id"), [(fakes.MAPPING_70, "mapping70"), (fakes.MAPPING_73, "mapping73")])
def test_mapping_files_load_and_are_told_apart_by_shape(fake_checkpoints, file_name, component_id):
    reader = CheckpointReader(fake_checkpoints / file_name)
    assert identify(reader) == {component_id: "mapping"}
    model = load_component(reader, component_id)
    assert torch.equal(model.state_dict()["first.0.weight"], fakes.fake_state(file_name, prefix="mapping")["first.0.weight"])
    other = "mapping73" if component_id == "mapping70" else "mapping70"
    with pytest.raises(UnsupportedCheckpoint, match=other):
        load_component(reader, other)


def test_mapping_file_with_training_entries_still_loads(tmp_path):
    """Released training checkpoints may also hold optimizer state and a discriminator: ignore them."""
    extra = {"optimizer_mapping": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                                   "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}]},
             "discriminator": {"conv.weight": torch.zeros(2, 2)}}
    path = fakes.write_fake_file(fakes.MAPPING_70, tmp_path / fakes.MAPPING_70, extra=extra)
    load_component(path, "mapping70")


def test_truncated_safetensors_is_corrupt_and_named(fake_checkpoints, tmp_path):
    source = fake_checkpoints / fakes.SAFETENSORS_256
    cut = tmp_path / fakes.SAFETENSORS_256
    with open(source, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(source.stat().st_size // 3))
    with pytest.raises(CorruptCheckpoint, match=fakes.SAFETENSORS_256):
        CheckpointReader(cut)


def test_truncated_pickle_is_corrupt_and_named(fake_checkpoints, tmp_path):
    source = fake_checkpoints / fakes.MAPPING_73
    cut = tmp_path / fakes.MAPPING_73
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match=fakes.MAPPING_73):
        CheckpointReader(cut)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "mapping_00229-model.pth.tar"
    torch.save({"mapping": Exploit(), "epoch": 1}, path)
    with pytest.raises(CorruptCheckpoint):
        CheckpointReader(path)
    assert not (tmp_path / "pwned").exists()


def test_a_gfpgan_file_given_as_sadtalker_is_unsupported(tmp_path):
    path = tmp_path / fakes.SAFETENSORS_256
    from safetensors.torch import save_file

    save_file({"conv_body_first.weight": torch.zeros(32, 3, 1, 1), "final_linear.weight": torch.zeros(8, 16)}, str(path))
    with pytest.raises(UnsupportedCheckpoint, match=r"not a SadTalker checkpoint.*conv_body_first"):
        identify(CheckpointReader(path))
    with pytest.raises(UnsupportedCheckpoint, match="generator"):
        load_component(path, "generator")


def test_a_wrong_shape_names_the_component_and_key(tmp_path):
    state = fakes.fake_state(fakes.MAPPING_70, prefix="mapping")
    state["fc_exp.weight"] = torch.zeros(44, 1024)
    path = tmp_path / "mapping.pth"
    torch.save({"mapping": state, "epoch": 0}, path)
    with pytest.raises(CorruptCheckpoint, match=r"mapping70.*fc_exp\.weight"):
        load_component(path, "mapping70")


def test_missing_file_is_missing_weights(tmp_path):
    with pytest.raises(MissingWeights):
        CheckpointReader(tmp_path / "nope.safetensors")


def _checkpoint_copy(fake_checkpoints, folder, names):
    folder.mkdir()
    for name in names:
        os.link(fake_checkpoints / name, folder / name)
    return folder


def test_check_folder_reports_ok_missing_and_corrupt(fake_checkpoints, tmp_path):
    folder = _checkpoint_copy(fake_checkpoints, tmp_path / "models", [fakes.SAFETENSORS_256, fakes.MAPPING_70])
    (folder / fakes.MAPPING_73).write_bytes(b"not a checkpoint")
    states = {s.file.name: s.state for s in check_folder(folder)}
    assert states == {fakes.SAFETENSORS_256: "ok", fakes.SAFETENSORS_512: "missing", fakes.MAPPING_70: "ok",
                      fakes.MAPPING_73: "corrupt"}


def _run_check(folder):
    return subprocess.run([sys.executable, "-m", "sadtalker", "check", "--checkpoints", str(folder)],
                          capture_output=True, text=True, timeout=300)


def test_check_command_exit_status_and_report(fake_checkpoints, tmp_path):
    folder = _checkpoint_copy(fake_checkpoints, tmp_path / "models",
                              [fakes.SAFETENSORS_256, fakes.MAPPING_70, fakes.MAPPING_73])
    os.link(fake_checkpoints / fakes.SAFETENSORS_256, folder / fakes.SAFETENSORS_512)
    result = _run_check(folder)
    # the default run also needs the facexlib detector's files: without them check must not say all is well
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 of 9 files ok" in result.stdout and "2 missing" in result.stdout
    assert "cannot start: it lacks detection_Resnet50_Final.pth, alignment_WFLW_4HG.pth" in result.stdout
    (folder / "facexlib").mkdir()
    for name in ("detection_Resnet50_Final.pth", "alignment_WFLW_4HG.pth"):
        torch.save({"weight": torch.zeros(2)}, folder / "facexlib" / name)
    result = _run_check(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 of 9 files ok" in result.stdout and "3 optional absent" in result.stdout
    assert "has every file it needs" in result.stdout

    shutil.copyfile(folder / fakes.MAPPING_70, tmp_path / "m.tmp")
    (folder / fakes.MAPPING_70).unlink()
    (folder / fakes.MAPPING_70).write_bytes((tmp_path / "m.tmp").read_bytes()[:1000])
    (folder / fakes.SAFETENSORS_512).unlink()
    result = _run_check(folder)
    assert result.returncode != 0
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines() if line.split()[1:2]}
    assert lines[fakes.MAPPING_70] == "corrupt" and lines[fakes.SAFETENSORS_512] == "absent"
    assert lines[fakes.SAFETENSORS_256] == "ok" and "Traceback" not in result.stderr


def test_check_names_a_models_folder_that_does_not_exist(tmp_path):
    result = _run_check(tmp_path / "nowhere")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert f"error [missing_weights]: the models folder {tmp_path / 'nowhere'} does not exist" in result.stderr
