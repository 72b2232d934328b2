"""Run by the WebUI at start (its own python, PYTHONPATH = the WebUI root), before it imports anything.

1. Installs what the core needs and the WebUI lacks, and nothing else: every pip call carries a constraints file
   frozen from the packages installed right now, so pip can add packages but never move numpy, torch, opencv,
   gradio or anything else the WebUI pinned. It never adds a second OpenCV when any `cv2` imports.
2. Downloads the default checkpoints into the models folder (models/SadTalker): the 256 renderer, both mapping
   nets and the default face detector's weights, with a progress bar; a cut download resumes at the next start.

Offline or on any failure it prints what is missing and where it goes, and exits 0: the WebUI starts anyway.
Skipped: pip with the WebUI's --skip-install; downloads with --sadtalker-no-download or SADTALKER_NO_DOWNLOAD=1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# (distribution, module it provides, pip requirement) — what sadtalker/ imports that a WebUI may lack.
REQUIREMENTS = [
    ("numpy", "numpy", "numpy>=1.26,<3"),
    ("scipy", "scipy", "scipy>=1.10"),
    ("safetensors", "safetensors", "safetensors>=0.4"),
    ("Pillow", "PIL", "Pillow>=9.5"),
    ("opencv-python-headless", "cv2", "opencv-python-headless>=4.8,<4.12"),
    ("soundfile", "soundfile", "soundfile>=0.12"),
    ("soxr", "soxr", "soxr>=0.3"),
    ("imageio-ffmpeg", "imageio_ffmpeg", "imageio-ffmpeg>=0.4.9"),
    ("facexlib", "facexlib", "facexlib>=0.3,<0.4"),  # the default face detector
]
NO_DEPS = {"facexlib"}  # its metadata asks for opencv-python, a second OpenCV beside the host's
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")


def say(text: str) -> None:
    print(f"[SadTalker] {text}", flush=True)


def webui_arguments() -> list[str]:
    """The WebUI's command line: COMMANDLINE_ARGS, plus the launching process's own arguments (Linux), since the
    WebUI runs this file without passing them on."""
    words = shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    pid = os.getppid()
    for _ in range(4):  # install.py <- shell <- launch.py
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        if any(word.endswith(("launch.py", "webui.py")) for word in cmdline):
            words += [word for word in cmdline if word]
            break
        match = re.search(r"^PPid:\s*(\d+)", status, re.M)
        if not match:
            break
        pid = int(match.group(1))
    return words


def parse_flags(words: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sadtalker-models-path")
    parser.add_argument("--sadtalker-no-download", action="store_true")
    parser.add_argument("--models-dir")
    parser.add_argument("--data-dir")
    parser.add_argument("--skip-install", action="store_true")
    return parser.parse_known_args(words)[0]


def is_installed(distribution: str, module: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(module) is not None


def frozen_constraints(folder: Path) -> Path:
    """name==version for every installed distribution: pip may add packages, never change one."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name, version = dist.metadata.get("Name"), dist.version
        if name and version and _VERSION.match(version):
            pins[name.lower()] = f"{name}=={version}"
    path = folder / "constraints.txt"
    path.write_text("\n".join(sorted(pins.values())) + "\n", encoding="utf-8")
    return path


def pip_install(requirements: list[str], constraints: Path, *, no_deps: bool) -> None:
    args = ["install", "-c", str(constraints), *(["--no-deps"] if no_deps else []), *requirements]
    try:
        import launch  # the WebUI's runner: honours --skip-install and INDEX_URL

        # run_pip goes through a shell (sh or cmd): quote every word, "<" and ">" in requirements included
        launch.run_pip(" ".join(f'"{a}"' for a in args), "SadTalker requirements: " + " ".join(requirements))
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", *args, "--prefer-binary"], check=True)


def install_missing(skip: bool) -> list[str]:
    """Returns the requirements still missing afterwards."""
    wanted = []
    for distribution, module, requirement in REQUIREMENTS:
        if module == "cv2" and importlib.util.find_spec("cv2") is not None:
            continue  # any OpenCV will do; a second one would fight the host's
        if not is_installed(distribution, module):
            wanted.append((distribution, requirement))
    if not wanted:
        return []
    if skip:
        return [requirement for _, requirement in wanted]
    failed = []
    with tempfile.TemporaryDirectory(prefix="sadtalker-install-") as scratch:
        constraints = frozen_constraints(Path(scratch))
        for no_deps in (False, True):
            batch = [req for dist, req in wanted if (dist in NO_DEPS) == no_deps]
            if not batch:
                continue
            try:
                pip_install(batch, constraints, no_deps=no_deps)
            except Exception as error:  # pip's own message says why; the WebUI must start anyway
                say(f"could not install {' '.join(batch)}: {error}")
                failed += batch
    importlib.invalidate_caches()
    return failed


def models_folder(flags: argparse.Namespace) -> Path:
    if flags.sadtalker_models_path:
        return Path(flags.sadtalker_models_path)
    webui_root = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or Path.cwd())
    data = Path(flags.data_dir) if flags.data_dir else webui_root
    return (Path(flags.models_dir) if flags.models_dir else data / "models") / "SadTalker"


def download_defaults(folder: Path, allow: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from sadtalker.checkpoints import files
    from sadtalker.checkpoints.download import console_progress, ensure_files, find_missing, missing_weights_message
    from sadtalker.errors import SadTalkerError

    wanted = files.first_run_files()
    from sadtalker.checkpoints.paths import ModelPaths

    paths = ModelPaths(folder)
    missing = find_missing(wanted, paths)
    if not missing:
        return
    if not allow:
        say(missing_weights_message([(wf, paths.folder(wf)) for wf in missing], reason="downloading is turned off"))
        return
    from sadtalker.checkpoints.check import verify_weight_file

    try:
        ensure_files(wanted, paths, allow_download=True, on_progress=console_progress(_terminal()),
                     verify=verify_weight_file)
        say(f"model files are ready in {folder}")
    except SadTalkerError as error:
        say(str(error))


def _terminal():
    """The WebUI captures this script's output and shows it only at the end; a progress bar goes to the terminal."""
    try:
        return open("/dev/tty" if os.name != "nt" else "CON", "w", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return sys.stdout


def main() -> int:
    flags = parse_flags(webui_arguments())
    still_missing = install_missing(skip=flags.skip_install)
    if still_missing:
        say("not installed: " + " ".join(still_missing) + f" (install them into {sys.executable}'s environment)")
        return 0
    allow = not flags.sadtalker_no_download and os.environ.get("SADTALKER_NO_DOWNLOAD", "") in ("", "0")
    try:
        download_defaults(models_folder(flags), allow)
    except Exception as error:  # never keep the WebUI from starting
        say(f"model download skipped: {type(error).__name__}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
