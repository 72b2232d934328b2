"""Options are defined once: the command line is generated from the specs, options round-trip through JSON, a
video we made gives its options (and seed) back, and errors name the option the way the caller knows it."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from sadtalker.__main__ import add_option_arguments, build_parser, main, options_from_args
from sadtalker.device import resolve_device
from sadtalker.errors import InvalidInput
from sadtalker.options import GenerateOptions, option_spec, option_specs, saved_option_values, saved_options
from sadtalker.video import probe

FRAMES = 3

# Every field changed from its default; each value is inside its range.
CHANGED = {"preprocess": "extfull", "still": False, "size": 512, "enhancer": "gfpgan", "pose_style": 45,
           "expression_scale": 0.5, "head_motion_scale": 2.0, "blink": False, "batch_size": 4,
           "ref_eyeblink": None, "ref_pose": None, "idle_seconds": 3.5, "yaw": (-10.0, 10.0), "pitch": (5.0,),
           "roll": (1.0, 2.0, 3.0), "seed": 2**40, "face_detector": "dlib", "face_box": (1, 2, 30, 40),
           "max_audio_seconds": 30.0}
STILL = {**CHANGED, "still": True, "head_motion_scale": 1.0}  # still mode keeps the photo's pose: no scale


def _generate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


def test_every_option_has_a_generated_flag_with_its_default_and_range_in_help():
    parser = _generate_parser()
    by_dest = {a.dest: a for a in parser._actions}
    help_text = parser.format_help()
    text = " ".join(help_text[help_text.index("generation options:"):].split())  # argparse wraps lines
    for spec in option_specs():
        action = by_dest[spec.name]
        assert action.option_strings == [spec.flag]
        assert action.default is argparse.SUPPRESS  # only given flags reach the namespace (they override loads)
        entry = text[text.index(spec.flag + " "):]
        entry = entry[:entry.index("]", entry.index("[default:")) + 1]  # the flag, its help and its bracket
        if spec.kind == "bool":
            assert f"[default: {'on' if spec.default else 'off'}]" in entry
        else:
            shown = " ".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
            assert f"[default: {shown if shown not in (None, '') else 'none'}" in entry, entry
        if spec.choices:
            assert "{" + ",".join(map(str, spec.choices)) + "}" in entry
            assert action.choices == spec.choices
        elif spec.minimum is not None:
            assert f"range {spec.range_text}]" in entry, entry
    assert option_spec("seed").range_text == f"0..{2**63 - 1}"  # whole numbers stay whole in help and errors


def test_the_parser_holds_no_option_that_is_not_a_spec():
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    dests = [a.dest for a in parser._actions if a.dest != "help"]
    assert dests == [spec.name for spec in option_specs()]
    fields = set(GenerateOptions().to_dict())
    assert fields == set(dests)  # every init field is a spec, every spec a field


def test_flags_parse_to_the_same_options_as_from_dict():
    argv = ["--preprocess", "extfull", "--size", "512", "--enhancer", "gfpgan", "--pose-style", "45",
            "--expression-scale", "0.5", "--head-motion-scale", "2", "--no-blink", "--batch-size", "4",
            "--idle-seconds", "3.5", "--yaw", "-10", "10", "--pitch", "5", "--roll", "1", "2", "3",
            "--seed", str(2**40), "--face-detector", "dlib", "--face-box", "1,2,30,40", "--max-audio-seconds", "30"]
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    assert options_from_args(parser.parse_args(argv)) == GenerateOptions.from_dict(CHANGED)
    assert options_from_args(parser.parse_args([])) == GenerateOptions()


@pytest.mark.parametrize("options", [GenerateOptions(), GenerateOptions.from_dict(CHANGED),
                                     GenerateOptions.from_dict(STILL)], ids=["defaults", "changed", "still"])
def test_round_trip_through_json(options):
    saved = json.loads(json.dumps(options.to_dict()))
    assert GenerateOptions.from_dict(saved) == options
    assert GenerateOptions.from_dict({**saved, "fps": 25}) == options  # what older records hold loads too
    assert options.replace() == options and options.replace(pose_style=3).pose_style == 3


def test_from_dict_refuses_what_it_cannot_keep():
    with pytest.raises(InvalidInput, match="fps is fixed at 25") as fixed:
        GenerateOptions.from_dict({"fps": 30})
    assert fixed.value.option == "fps"
    with pytest.raises(InvalidInput, match="unknown option 'pose'") as unknown:
        GenerateOptions.from_dict({"pose": 1})
    assert unknown.value.option == "pose"
    with pytest.raises(InvalidInput, match="yaw must be a list"):
        GenerateOptions.from_dict({"yaw": 10})


def test_errors_name_the_option_as_each_caller_knows_it(portrait, speech_clip, capsys):
    with pytest.raises(InvalidInput) as api:
        GenerateOptions.from_dict({"pose_style": 46})
    assert api.value.option == "pose_style" and str(api.value).startswith("pose_style must be a whole number")
    assert "0 to 45" in str(api.value)

    status = main(["generate", "--image", str(portrait), "--audio", str(speech_clip(FRAMES)), "--pose-style", "46"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error [invalid_input]: --pose-style must be a whole number from 0 to 45; got 46"), err
    main(["generate", "--image", str(portrait), "--audio", str(speech_clip(FRAMES)), "--seed", "-1"])
    assert "--seed must be a whole number from 0 to 9223372036854775807" in capsys.readouterr().err


def test_device_is_resolved_once_with_a_named_error():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(InvalidInput, match="not a device name") as bad:
        resolve_device("gpu")
    assert bad.value.option == "device"
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match="'cuda' is not available here"):
            resolve_device("cuda")
    with pytest.raises(InvalidInput, match="is not available here"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last GPU, on any machine


def test_device_error_on_the_command_line_and_in_the_python_api(tmp_path, capsys):
    from sadtalker.pipeline import SadTalkerPipeline

    with pytest.raises(InvalidInput) as api:
        SadTalkerPipeline(tmp_path, device="tpu")
    assert api.value.option == "device"
    status = main(["generate", "--image", "x.png", "--audio", "x.wav", "--device", "cuda", "--checkpoints",
                   str(tmp_path)])
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert "device" not in err
    else:
        assert status == 2 and err.startswith("error [invalid_input]: --device 'cuda' is not available here"), err


# ------------------------------------------------------------------------------------ reload a video we made

@pytest.fixture(scope="module")
def first_run(models_dir, portrait, speech_clip, tmp_path_factory):
    """A real 3-frame run through the command line, without --seed (the run draws one and saves it)."""
    folder = tmp_path_factory.mktemp("first")
    out = folder / "first.mp4"
    status = main(["generate", "--image", str(portrait), "--audio", str(speech_clip(FRAMES)), "--out", str(out),
                   "--checkpoints", str(models_dir), "--no-download", "--face-detector", "dlib", "--quiet",
                   "--pose-style", "5", "--expression-scale", "1.5", "--batch-size", "3", "--no-blink",
                   "--save-intermediates", str(folder / "inter")])
    assert status == 0
    return out, folder / "inter"


def test_options_and_seed_come_back_from_the_mp4_and_the_sidecar(first_run):
    video, _ = first_run
    from_mp4, seed = saved_options(video)
    from_json, json_seed = saved_options(video.with_suffix(".json"))
    assert from_mp4 == from_json and seed == json_seed and isinstance(seed, int)
    assert probe(video).parameters["seed"] == seed
    expected = GenerateOptions(face_detector="dlib", pose_style=5, expression_scale=1.5, batch_size=3, blink=False,
                               seed=seed)
    assert from_mp4 == expected


def test_options_from_reproduces_the_run_and_a_given_flag_overrides(first_run, models_dir, portrait, speech_clip,
                                                                   tmp_path):
    video, inter = first_run
    again = tmp_path / "again.mp4"
    status = main(["generate", "--options-from", str(video), "--image", str(portrait),
                   "--audio", str(speech_clip(FRAMES)), "--out", str(again), "--checkpoints",
                   str(models_dir), "--no-download", "--quiet",
                   "--batch-size", "1", "--save-intermediates", str(tmp_path / "inter")])
    assert status == 0
    # the saved seed gives the same blinks, latents and so the same coefficients, bit for bit
    np.testing.assert_array_equal(np.load(tmp_path / "inter" / "coefficients_70.npy"),
                                  np.load(inter / "coefficients_70.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "inter" / "pose_latents.npy"),
                                  np.load(inter / "pose_latents.npy"))
    first, seed = saved_options(video)
    second, second_seed = saved_options(again)
    assert second_seed == seed
    assert second == first.replace(batch_size=1)  # the given flag won; every other option was loaded


def test_options_from_a_sidecar_with_overrides_before_validation(first_run, tmp_path):
    video, _ = first_run
    sidecar = video.with_suffix(".json")
    parser = _generate_parser()
    args = parser.parse_args(["--image", "x", "--options-from", str(sidecar), "--pose-style", "7", "--still"])
    options = options_from_args(args, saved_option_values(args.options_from))
    assert options == saved_options(sidecar)[0].replace(pose_style=7, still=True)

    # a stored reference video that has moved does not block the run when the caller replaces it
    record = json.loads(sidecar.read_text())
    record["options"]["ref_pose"] = str(tmp_path / "moved.mp4")
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(record))
    with pytest.raises(InvalidInput, match="ref_pose: no such video file"):
        saved_options(edited)
    args = parser.parse_args(["--image", "x", "--options-from", str(edited), "--ref-pose", str(video)])
    assert options_from_args(args, saved_option_values(edited)).ref_pose == str(video)


def test_options_from_a_file_we_did_not_make_is_a_named_error(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InvalidInput, match="holds no SadTalker parameters") as error:
        saved_options(other)
    assert error.value.option == "options_from"
    assert error.value.named_for(lambda name: "--options-from") == str(error.value)  # no option name in front

