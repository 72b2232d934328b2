"""Command line: `python -m sadtalker {generate,download,check} ...`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import InvalidInput, MissingWeights, SadTalkerError, Terminated


def _models_dir(value: str | None) -> Path:
    from .checkpoints.paths import default_models_dir

    return Path(value) if value else default_models_dir()


def cmd_check(args: argparse.Namespace) -> int:
    from .checkpoints.check import CHECKED_FILES, DEFAULT_RUN_FILES, check_folder

    folder = _models_dir(args.checkpoints)
    if not folder.is_dir():
        raise MissingWeights(f"the models folder {folder} does not exist; get the files with "
                             f"`python -m sadtalker download --checkpoints {folder}`")
    statuses = check_folder(folder, CHECKED_FILES, required=DEFAULT_RUN_FILES)
    width = max(len(s.file.name) for s in statuses)
    for status in statuses:
        sys.stdout.write(f"{status.state:8} {status.file.name:<{width}}  {status.detail}\n")
    counts = {state: sum(s.state == state for s in statuses) for state in ("ok", "missing", "corrupt", "absent")}
    sys.stdout.write(f"{counts['ok']} of {len(statuses)} files ok in {folder} ({counts['missing']} missing, "
                     f"{counts['corrupt']} corrupt, {counts['absent']} optional absent)\n")
    lacking = [s.file.name for s in statuses if s.file in DEFAULT_RUN_FILES and s.state != "ok"]
    sys.stdout.write(("the default run (256, crop, facexlib) cannot start: it lacks " + ", ".join(lacking))
                     if lacking else "the default run (256, crop, facexlib) has every file it needs")
    sys.stdout.write("\n")
    return 0 if all(s.ok for s in statuses) else 1


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
                        verify=verify_weight_file, verify_present=True)
    for path in done:
        sys.stdout.write(f"ok       {path}\n")
    return 0


def _face_box(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected four whole numbers X0,Y0,X1,Y1") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError("expected four whole numbers X0,Y0,X1,Y1")
    return values  # type: ignore[return-value]


def option_flag(name: str) -> str:
    """How the command line names an option field (`pose_style` -> `--pose-style`, `blink` -> `--no-blink`)."""
    from .options import option_spec

    try:
        return option_spec(name).flag
    except KeyError:
        return "--" + name.replace("_", "-")


def add_option_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One argument per GenerateOptions field (or the named ones), generated from its OptionSpec.

    Defaults are not set on the namespace (argparse.SUPPRESS): only flags the user gave appear, so they can
    override options loaded with --options-from. The help shows each default and range.
    """
    from .options import option_specs

    group = parser.add_argument_group("generation options")
    for spec in option_specs():
        if names is not None and spec.name not in names:
            continue
        if spec.kind == "bool":
            text = ("turn off: " + spec.help) if spec.default else spec.help
            extra = f" [default: {'on' if spec.default else 'off'}]"
        else:
            shown = " ".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
            text = spec.help
            extra = f" [default: {shown if shown not in (None, '') else 'none'}" + (
                f"; range {spec.range_text}]" if spec.range_text and not spec.choices else "]")
        common = {"dest": spec.name, "default": argparse.SUPPRESS, "help": text + extra}
        if spec.kind == "bool":
            group.add_argument(spec.flag, action="store_false" if spec.default else "store_true", **common)
        elif spec.kind == "choice":
            kind = type(spec.choices[0])
            group.add_argument(spec.flag, type=kind, choices=spec.choices, **common)
        elif spec.kind in ("int", "seed"):
            group.add_argument(spec.flag, type=int, metavar="N", **common)
        elif spec.kind == "float":
            group.add_argument(spec.flag, type=float, metavar="X", **common)
        elif spec.kind == "angles":
            group.add_argument(spec.flag, type=float, nargs="+", metavar="DEG", **common)
        elif spec.kind == "box":
            group.add_argument(spec.flag, type=_face_box, metavar="X0,Y0,X1,Y1", **common)
        elif spec.kind == "video":
            group.add_argument(spec.flag, metavar="VIDEO", **common)
        else:  # pragma: no cover - a new kind must get its argument here
            raise AssertionError(f"no command-line form for option kind {spec.kind!r}")


def options_from_args(args: argparse.Namespace, base=None):
    """GenerateOptions from the flags given, over `base` (options loaded with --options-from) or the defaults."""
    from .options import GenerateOptions, option_specs

    given = {spec.name: getattr(args, spec.name) for spec in option_specs() if hasattr(args, spec.name)}
    for name in ("yaw", "pitch", "roll", "face_box"):
        if name in given:
            given[name] = tuple(given[name])
    if base is None:
        return GenerateOptions(**given)
    return base.replace(**given)


_progress_line = {"open": False}  # a progress line without its newline: an error must start on a line of its own


def _stage_progress(stream):
    last = {"stage": None, "total": 0}

    def report(stage: str, done: int, total: int) -> None:
        if stage != last["stage"]:
            if last["stage"] is not None:  # the stage is over: show it complete, n/n
                stream.write(f"\r{last['stage']:7} {last['total']}/{last['total']}")
                if stage == "done":
                    stream.flush()
                    return
                stream.write("\n")
            last["stage"] = stage
        last["total"] = total
        stream.write(f"\r{stage:7} {done}/{total}")
        stream.flush()
        _progress_line["open"] = True

    return report


def cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoints.download import console_progress
    from .options import saved_options
    from .pipeline import SadTalkerPipeline

    base = saved_options(args.options_from)[0] if args.options_from else None
    options = options_from_args(args, base)
    if args.audio is None and options.idle_seconds is None:
        raise InvalidInput("give --audio, or --idle-seconds for a video without speech")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InvalidInput("--device cuda: no CUDA device is available here; use --device cpu")
    pipeline = SadTalkerPipeline(_models_dir(args.checkpoints), device=args.device,
                                 allow_download=not args.no_download, on_download_progress=console_progress(sys.stderr))
    output = Path(args.out) if args.out else None
    result = pipeline.generate(args.image, args.audio, options, output=output, output_dir=Path("results"),
                               on_progress=None if args.quiet else _stage_progress(sys.stderr),
                               intermediates_dir=args.save_intermediates, overwrite=args.overwrite)
    if not args.quiet:
        sys.stderr.write("\n")
        _progress_line["open"] = False
    for warning in result.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    sys.stderr.write(f"{result.num_frames} frames (seed {result.seed}): {timing}\n")
    sys.stdout.write(f"{result.video}\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import report_json, run_benchmark
    from .options import GenerateOptions
    from .pipeline import SadTalkerPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    options = GenerateOptions(preprocess=args.preprocess, size=args.size, batch_size=args.batch_size,
                              face_detector=args.face_detector, enhancer=args.enhancer, seed=0,
                              max_audio_seconds=max(600.0, args.audio_seconds + 1))
    pipeline = SadTalkerPipeline(_models_dir(args.checkpoints), device=args.device, allow_download=False)
    report = run_benchmark(pipeline, args.image, options, audio=args.audio, audio_seconds=args.audio_seconds,
                           render_frames=None if args.render_frames == 0 else args.render_frames)
    sys.stdout.write((report_json(report) if args.json else report.table()) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sadtalker", description="SadTalker talking heads")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="photo + speech -> talking-head MP4")
    gen.add_argument("--image", required=True, help="portrait photo (any format Pillow reads)")
    gen.add_argument("--audio", help="speech: wav, mp3, flac, ogg, m4a, or a video file's audio")
    gen.add_argument("--out", metavar="FILE.mp4", help="output file (default: a new name under ./results)")
    gen.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    gen.add_argument("--options-from", metavar="OLD.mp4|OLD.json",
                     help="reuse the options and seed of a video made earlier; flags given here override them")
    gen.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    gen.add_argument("--no-download", action="store_true", help="never download missing weights")
    gen.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    gen.add_argument("--save-intermediates", metavar="DIR", help="keep landmarks, crop and coefficients as .npy")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_option_arguments(gen)
    gen.set_defaults(run=cmd_generate)
    bench = sub.add_parser("bench", help="seconds per stage and per frame, and memory, for an audio length")
    bench.add_argument("--image", required=True)
    bench.add_argument("--audio", help="speech file (default: synthetic speech-like audio)")
    bench.add_argument("--audio-seconds", type=float, default=10.0, help="length of the synthetic audio")
    bench.add_argument("--render-frames", type=int, default=8,
                       help="frames to render (0: all); the encoder still gets the clip's full length")
    bench.add_argument("--preprocess", default="crop", choices=("crop", "extcrop", "resize", "full", "extfull"))
    bench.add_argument("--size", type=int, default=256, choices=(256, 512))
    bench.add_argument("--batch-size", type=int, default=2)
    bench.add_argument("--enhancer", default="none", choices=("none", "gfpgan", "restoreformer", "codeformer"))
    bench.add_argument("--face-detector", default="facexlib", choices=("facexlib", "face-alignment", "dlib"))
    bench.add_argument("--checkpoints", metavar="DIR")
    bench.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(run=cmd_bench)
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


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def _on_stop_signals(handler) -> dict:
    """SIGTERM and SIGHUP -> `handler`; returns the handlers they had. Only the main thread may set them."""
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread (main() called from a worker): leave signals alone
                pass
    return previous


def _error_line(text: str) -> None:
    if _progress_line["open"]:
        sys.stderr.write("\n")
        _progress_line["open"] = False
    sys.stderr.write(text + "\n")


def _usage_errors_as_invalid_input(parser: argparse.ArgumentParser) -> None:
    """argparse's own errors (`--size 384`, a missing --image) as `error [invalid_input]: ...` like every other
    error, instead of a usage dump; --help still prints the usage."""

    def fail(message: str, prog=parser.prog) -> None:
        raise InvalidInput(f"{message} (see `{prog} --help`)")

    parser.error = fail  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _usage_errors_as_invalid_input(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _usage_errors_as_invalid_input(parser)
    try:
        args = parser.parse_args(argv)
    except InvalidInput as exc:
        _error_line(f"error [{exc.code}]: {exc.message}")
        return exc.exit_status
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    # SIGTERM (timeout, systemd, a WebUI stop) and SIGHUP clean up like Ctrl-C: no .part file is left behind
    previous = _on_stop_signals(_raise_terminated)
    try:
        return args.run(args)
    except SadTalkerError as exc:
        _error_line(f"error [{exc.code}]: {exc.named_for(option_flag)}")
        return exc.exit_status
    except Terminated as stop:
        _error_line(f"error [terminated]: stopped by {stop.signal_name}; the run was cleaned up")
        return 128 + stop.signum
    except KeyboardInterrupt:
        _error_line("interrupted")
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
