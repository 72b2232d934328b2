"""Command line: `python -m sadtalker {generate,download,check} ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import SadTalkerError


def _models_dir(value: str | None) -> Path:
    from .checkpoints.paths import default_models_dir

    return Path(value) if value else default_models_dir()


def cmd_check(args: argparse.Namespace) -> int:
    from .checkpoints.check import check_folder

    folder = _models_dir(args.checkpoints)
    statuses = check_folder(folder)
    width = max(len(s.file.name) for s in statuses)
    for status in statuses:
        sys.stdout.write(f"{status.state:8} {status.file.name:<{width}}  {status.detail}\n")
    bad = [s for s in statuses if not s.ok]
    sys.stdout.write(f"{len(statuses) - len(bad)} of {len(statuses)} files ok in {folder}\n")
    return 1 if bad else 0


def cmd_download(args: argparse.Namespace) -> int:
    from .checkpoints import files
    from .checkpoints.check import verify_weight_file
    from .checkpoints.download import console_progress, ensure_files
    from .checkpoints.paths import ModelPaths

    paths = ModelPaths(_models_dir(args.checkpoints))
    wanted = [files.sadtalker_file(size) for size in sorted(set(args.size))]
    wanted += [files.MAPPING_CROP, files.MAPPING_FULL]
    if args.detector == "facexlib":
        wanted += [files.FACEXLIB_DETECTION, files.FACEXLIB_ALIGNMENT]
    if args.enhancer != "none":
        wanted.append(files.enhancer_file(args.enhancer))
    done = ensure_files(wanted, paths, allow_download=True, on_progress=console_progress(sys.stderr),
                        verify=verify_weight_file)
    for path in done:
        sys.stdout.write(f"ok       {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sadtalker", description="SadTalker talking heads")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="load every checkpoint strictly and report each file")
    check.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    check.set_defaults(run=cmd_check)
    download = sub.add_parser("download", help="download the checkpoints (resumes, verifies, never overwrites)")
    download.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    download.add_argument("--size", type=int, choices=(256, 512), nargs="+", default=[256],
                          help="renderer size(s) to fetch (default 256)")
    download.add_argument("--detector", choices=("facexlib", "none"), default="facexlib",
                          help="also fetch the default face detector's weights")
    download.add_argument("--enhancer", choices=("none", "gfpgan", "restoreformer", "codeformer"), default="none")
    download.set_defaults(run=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except SadTalkerError as exc:
        sys.stderr.write(f"error [{exc.code}]: {exc}\n")
        return exc.exit_status
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
