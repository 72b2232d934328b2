"""Command line: `python -m sadtalker {generate,preview,batch,bench,check,download} ...`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .device import DEVICE_CHOICES, resolve_device
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
            text = ("turn off " + spec.help) if spec.default else spec.help
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
    """GenerateOptions from the flags given, laid over `base` (the values loaded with --options-from: a dict, or
    GenerateOptions) or the defaults. A flag given replaces the loaded value before anything is validated."""
    from .options import GenerateOptions, option_specs

    given = {spec.name: getattr(args, spec.name) for spec in option_specs() if hasattr(args, spec.name)}
    loaded = base.to_dict() if isinstance(base, GenerateOptions) else dict(base or {})
    return GenerateOptions.from_dict({**loaded, **given})


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
    from .options import saved_option_values
    from .pipeline import SadTalkerPipeline

    loaded = saved_option_values(args.options_from) if args.options_from else None
    options = options_from_args(args, loaded)
    if args.audio is None and options.idle_seconds is None:
        raise InvalidInput("give --audio, or --idle-seconds for a video without speech")
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


def _batch_progress(planned, stream, verbose: bool):
    labels = {entry.index: entry.label for entry in planned}

    def report(event) -> None:
        label = labels.get(event.index, f"item {event.index + 1}")
        if event.stage == "started":
            again = f", attempt {event.attempt}" if event.attempt > 1 else ""
            stream.write(f"started  {label} on {event.worker}{again}\n")
        elif event.stage == "retrying":
            stream.write(f"retrying {label}: its worker died (attempt {event.attempt})\n")
        elif verbose and event.stage != "queued":
            stream.write(f"         {label}: {event.stage} {event.done}/{event.total}\n")
        stream.flush()

    return report


def cmd_batch(args: argparse.Namespace) -> int:
    import time

    from .batch import LocalBackend, plan_batch, read_manifest, run_batch, summary_line

    items = read_manifest(args.manifest)
    planned = plan_batch(items, options_from_args(args), args.out_dir)
    progress = None if args.quiet else _batch_progress(planned, sys.stderr, args.verbose)
    if args.ray:
        backend = _ray_backend(args, progress)
    else:
        from .pipeline import SadTalkerPipeline

        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InvalidInput("--device cuda: no CUDA device is available here; use --device cpu")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        backend = LocalBackend(SadTalkerPipeline(_models_dir(args.checkpoints), device=args.device,
                                                 allow_download=not args.no_download), on_progress=progress)
    started, results = time.perf_counter(), []
    try:
        for result in run_batch(backend, planned):
            results.append(result)
            sys.stdout.write(result.line() + "\n")
            sys.stdout.flush()
            if args.verbose and result.stage_seconds:
                timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
                sys.stderr.write(f"         {result.label}: {timing} on {result.worker}\n")
    finally:
        backend.close()
    sys.stdout.write(summary_line(results, time.perf_counter() - started) + "\n")
    return 0 if all(r.ok for r in results) else 1


def cmd_preview(args: argparse.Namespace) -> int:
    from PIL import Image

    from .checkpoints.download import console_progress
    from .pipeline import SadTalkerPipeline
    from .preview import Nudge

    options = options_from_args(args)
    pipeline = SadTalkerPipeline(_models_dir(args.checkpoints), allow_download=not args.no_download,
                                 on_download_progress=console_progress(sys.stderr))
    nudge = Nudge(*args.nudge) if args.nudge else None
    found = pipeline.preview(args.image, options, face_index=args.face, nudge=nudge)
    for number, face in enumerate(found.faces):
        mark = "*" if number == found.chosen else " "
        sys.stdout.write(f"{mark} face {number}: box {','.join(map(str, face.box))} score {face.score:.2f}\n")
    for message in found.messages:
        sys.stderr.write(f"note: {message}\n")
    sys.stdout.write(f"{options.preprocess} crop: {','.join(map(str, found.crop_box))}\n")
    if found.face_box is not None:
        sys.stdout.write(f"to render this face: --face-box {','.join(map(str, found.face_box))}\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(found.image).save(out)
    sys.stdout.write(f"{out}\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import report_json, run_benchmark
    from .options import GenerateOptions
    from .pipeline import SadTalkerPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("--device cuda: no CUDA device is available here; use --device cpu")
    options = GenerateOptions(preprocess=args.preprocess, size=args.size, batch_size=args.batch_size,
                              face_detector=args.face_detector, enhancer=args.enhancer, precision=args.precision,
                              seed=0, max_audio_seconds=max(600.0, args.audio_seconds + 1))
    pipeline = SadTalkerPipeline(_models_dir(args.checkpoints), device=args.device, allow_download=False)
    report = run_benchmark(pipeline, args.image, options, audio=args.audio, audio_seconds=args.audio_seconds,
                           frames=None if args.frames == 0 else args.frames, check_quality=args.check_quality)
    sys.stdout.write((report_json(report) if args.json else report.table()) + "\n")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import threading

    from .gradio_compat import enable_queue
    from .host import Host
    from .ui import build_ui

    resolve_device(args.device)  # a named error now, not in the first request
    one_at_a_time = threading.Lock()  # one pipeline, one run at a time; other events (Cancel) still answer

    def run_exclusive(job, job_id=None):
        with one_at_a_time:
            return job()

    host = Host(_models_dir(args.checkpoints), Path(args.outputs), device=args.device,
                allow_download=not args.no_download, run_exclusive=run_exclusive, name="app")
    ui = build_ui(host, title="SadTalker")
    enable_queue(ui.blocks, concurrency=4)
    sys.stderr.write(f"SadTalker app on http://{args.host}:{args.port} (models: {host.models_dir}, "
                     f"videos: {host.outputs_dir})\n")
    ui.blocks.launch(server_name=args.host, server_port=args.port, show_api=False, inbrowser=False)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .api import ApiSettings, PathPolicy, create_app, exclusive, parse_credentials
    except ImportError as exc:
        from .errors import MissingDependency

        raise MissingDependency(f"the server needs fastapi and uvicorn ({exc.name} is missing): "
                                "pip install fastapi uvicorn") from None
    from .host import Host

    resolve_device(args.device)  # a named error now, not in the first request
    if args.max_body_mb <= 0:
        raise InvalidInput("--max-body-mb must be positive", option="max_body_mb")
    outputs = Path(args.outputs).resolve()
    host = Host(_models_dir(args.checkpoints), outputs, device=args.device, allow_download=not args.no_download,
                run_exclusive=exclusive(), name="server")
    settings = ApiSettings(data_dir=Path(args.data).resolve() if args.data else outputs / ".sadtalker-jobs",
                           credentials=parse_credentials(args.api_auth),
                           max_body_bytes=int(args.max_body_mb * 2**20),
                           paths=PathPolicy(allowed=bool(args.allow_paths),
                                            folders=tuple(Path(p).resolve() for p in args.allow_paths or ())))
    if args.ray:
        backend = _ray_backend(args)
        sys.stderr.write(f"SadTalker API: items run on Ray ({args.ray}), {backend.workers} worker(s)\n")
    else:
        backend = None
        if args.workers:
            raise InvalidInput("--workers needs --ray (without it the server renders one item at a time)",
                               option="ray")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
    uvicorn.run(create_app(host, settings, backend), host=args.host, port=args.port,
                log_level="info" if args.verbose else "warning")
    return 0


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="local|auto|ADDRESS",
                        help="run the items on Ray: start a local cluster, join the running one (auto) or the one at "
                             "HOST:PORT")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="Ray actors (default: one per GPU with --device cuda, else one per node)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads per worker")
    parser.add_argument("--max-attempts", type=int, default=3, metavar="N",
                        help="Ray: tries per item when its worker dies (default 3)")


def _ray_backend(args: argparse.Namespace, on_progress=None):
    from .batch_ray import RayBackend

    return RayBackend(args.ray, models_dir=_models_dir(args.checkpoints), device=args.device, workers=args.workers,
                      threads_per_worker=args.threads, allow_download=not args.no_download,
                      max_attempts=args.max_attempts, on_progress=on_progress)


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
    gen.add_argument("--device", default="cpu", choices=DEVICE_CHOICES,
                     help="where the networks run (auto: CUDA, else Apple GPU, else cpu) [default: cpu]")
    gen.add_argument("--save-intermediates", metavar="DIR", help="keep landmarks, crop and coefficients as .npy")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_option_arguments(gen)
    gen.set_defaults(run=cmd_generate)
    preview = sub.add_parser("preview", help="draw the faces, landmarks and crop a run would use, before rendering")
    preview.add_argument("--image", required=True, help="portrait photo")
    preview.add_argument("--out", default="preview.png", metavar="FILE.png", help="where to save the picture")
    preview.add_argument("--face", type=int, metavar="N", help="use face N (as numbered in the picture)")
    preview.add_argument("--nudge", type=float, nargs=3, metavar=("DX", "DY", "SCALE"),
                         help="move the face box by DX, DY (fractions of its size) and scale it")
    preview.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    preview.add_argument("--no-download", action="store_true", help="never download missing weights")
    add_option_arguments(preview, ("preprocess", "size", "face_detector", "face_box"))
    preview.set_defaults(run=cmd_preview)
    batch = sub.add_parser("batch", help="many photo + speech items from a manifest, locally or on a Ray cluster",
                           description="MANIFEST: a CSV with the header image,audio (optional: name and option "
                           "columns such as pose_style, still) or a JSON list of {image, audio, name, options}. "
                           "Relative paths are read from the manifest's folder. An item's own column overrides "
                           "the flag given here, which overrides the default.")
    batch.add_argument("manifest", metavar="MANIFEST", help="items.csv or items.json")
    batch.add_argument("--out-dir", required=True, metavar="DIR", help="where the videos go (never overwritten)")
    _add_ray_arguments(batch)
    batch.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    batch.add_argument("--no-download", action="store_true", help="never download missing weights")
    batch.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_option_arguments(batch)
    batch.set_defaults(run=cmd_batch)
    bench = sub.add_parser("bench", help="seconds per stage and per frame, GFLOP/s, memory and the fast mode's "
                                         "quality, for an audio length")
    bench.add_argument("--image", required=True)
    bench.add_argument("--audio", help="speech file (default: synthetic speech-like audio)")
    bench.add_argument("--audio-seconds", type=float, default=10.0, help="length of the synthetic audio")
    bench.add_argument("--frames", type=int, default=8,
                       help="frames to time after one warm-up frame (0: render all, no warm-up); the encoder still "
                            "gets the clip's full length")
    bench.add_argument("--preprocess", default="crop", choices=("crop", "extcrop", "resize", "full", "extfull"))
    bench.add_argument("--size", type=int, default=256, choices=(256, 512))
    bench.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"))
    bench.add_argument("--check-quality", action="store_true",
                       help="also render the same frames in fp32 and report the PSNR against them")
    bench.add_argument("--batch-size", type=int, default=1, help="frames per network call (1 is fastest on CPU)")
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
    app = sub.add_parser("app", help="the SadTalker page in a browser (the WebUI tab, standalone)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    app.add_argument("--outputs", metavar="DIR", default="results", help="videos go to DIR/<date>/ (default ./results)")
    app.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    app.add_argument("--no-download", action="store_true", help="never download missing weights")
    app.set_defaults(run=cmd_app)
    serve = sub.add_parser("serve", help="the HTTP API (/sadtalker/v1) without the WebUI")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=7861)
    serve.add_argument("--checkpoints", metavar="DIR", help="models folder (default: per-user cache)")
    serve.add_argument("--outputs", metavar="DIR", default="outputs",
                       help="videos go to DIR/<date>/ (default ./outputs)")
    serve.add_argument("--data", metavar="DIR", help="job records and uploads (default: OUTPUTS/.sadtalker-jobs)")
    serve.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="require HTTP Basic credentials")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (default 64 MiB)")
    serve.add_argument("--allow-paths", metavar="DIR", nargs="+",
                       help="accept server-side file paths (image_path, audio_path, reference videos) under these "
                            "folders; without it only base64 inputs are accepted")
    serve.add_argument("--no-download", action="store_true", help="never download missing weights")
    serve.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    _add_ray_arguments(serve)
    serve.set_defaults(run=cmd_serve)
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
