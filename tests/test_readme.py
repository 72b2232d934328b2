"""The README cannot rot: its tables are the code's, its synopsis names the real commands, and its quick start
runs as written (with fake checkpoints and the dlib detector, where the real run would download weights)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLONE = "~/sd-webui-sadtalker"  # where the quick start clones to


def _quick_start() -> list[str]:
    block = re.search(r"<!-- quickstart:start -->\n```bash\n(.*?)```\n<!-- quickstart:end -->", README, re.S)
    assert block, "README.md lost its quick-start block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_option_and_error_tables_are_the_code_s():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_command_in_the_synopsis_exists_and_every_command_is_in_it():
    from sadtalker.__main__ import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 (argparse has no API)
    synopsis = re.search(r"## Command line\n\n```\n(.*?)```", README, re.S).group(1)
    named = set(re.findall(r"^python -m sadtalker (\w+)", synopsis, re.M))
    assert named == commands


def test_quick_start_setup_line_names_files_that_exist():
    setup, _ = _quick_start()
    assert "tools/setup-test-env.sh" in setup and (ROOT / "tools" / "setup-test-env.sh").is_file()
    assert (ROOT / ".ci" / "run").is_file() and "bash ~/sd-webui-sadtalker/.ci/run" in README


def test_quick_start_generate_runs_from_any_folder_and_says_where_the_video_went(fake_checkpoints, speech_clip,
                                                                                 tmp_path):
    import skimage.data

    _, generate = _quick_start()
    words = shlex.split(generate)
    assert words[0] == f"{CLONE}/.venv/bin/python", "the quick start's generate line changed its form"
    folder = tmp_path / "somewhere-else"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(folder / "my-photo.jpg")
    shutil.copy(speech_clip(3), folder / "my-speech.wav")
    env = {**os.environ, "SADTALKER_MODELS": str(fake_checkpoints),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, *words[1:], "--face-detector", "dlib", "-q"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    video = Path(done.stdout.strip().splitlines()[-1])
    video = video if video.is_absolute() else folder / video
    assert video.is_file() and video.suffix == ".mp4" and video.stat().st_size > 0
