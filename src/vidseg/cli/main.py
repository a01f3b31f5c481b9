"""The ``vidseg`` command: track, eval, demo, info, serve.

Errors caused by the user's input print one line, ``vidseg: error: <message>``, on stderr and
exit with status 1 (bad input: a video, mask, prompt or output location) or 2 (a mistake in
the command line itself); Ctrl-C exits with 130. Neither leaves partial outputs behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vidseg import __version__
from vidseg.cli.prompts import UsageError, add_prompt_options, apply_prompts
from vidseg.errors import VidsegError

PROG = "vidseg"

EXIT_INPUT_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes raise :class:`UsageError` instead of exiting, so that
    :func:`main` prints them as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Promptable video object segmentation: prompt objects on any frame "
        "(mask, clicks or box) and track them through the video on a CPU.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    track = commands.add_parser(
        "track",
        help="track prompted objects through a video",
        description="Track objects through VIDEO (a video file or a folder of frames) from "
        "prompts given on any frame, writing one palette PNG mask per frame to --out.",
        epilog="example: vidseg track clip.mp4 --obj 1 --point 120,80 --obj 2 "
        "--box 10,20,90,140@15 --out masks --overlay overlay.mp4",
    )
    track.add_argument("video", metavar="VIDEO", help="video file or folder of frames")
    add_prompt_options(track)
    outputs = track.add_argument_group("outputs")
    outputs.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        type=Path,
        help="folder for the masks, one palette PNG per frame (pixel value = object id); "
        "replaced if it holds only PNGs",
    )
    outputs.add_argument(
        "--overlay", metavar="FILE.mp4", type=Path, help="also write an overlay video"
    )
    outputs.add_argument(
        "--coco", metavar="FILE.json", type=Path, help="also write the masks as COCO RLE JSON"
    )
    tracking = track.add_argument_group("tracking")
    tracking.add_argument(
        "--direction",
        choices=("forward", "backward", "both"),
        default="both",
        help="which way to track from the start frame (default: both)",
    )
    tracking.add_argument(
        "--start",
        metavar="FRAME",
        type=_frame_index("--start"),
        help="frame to start from (default: the first prompted frame; the last going backward)",
    )
    tracking.add_argument(
        "--max-frames",
        metavar="N",
        type=_positive_int("--max-frames"),
        help="visit at most N frames in each direction, the start frame included",
    )
    tracking.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int("--threads"),
        help="CPU threads for the engine (default: torch's choice, one per core); fewer can "
        "be much faster on a machine busy with other work",
    )
    tracking.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    tracking.add_argument(
        "--timings", action="store_true", help="print how long each stage took (to stderr)"
    )
    _add_model_options(track)
    track.set_defaults(handler=cmd_track)

    evaluate = commands.add_parser(
        "eval",
        help="score predicted masks against ground truth (DAVIS J&F)",
        description="Score PNG masks in PRED_DIR against GT_DIR with the DAVIS semi-supervised "
        "protocol. Layouts: DIR/<sequence>/*.png or DIR/*.png (one sequence).",
    )
    evaluate.add_argument("pred_dir", metavar="PRED_DIR", type=Path)
    evaluate.add_argument("gt_dir", metavar="GT_DIR", type=Path)
    evaluate.add_argument(
        "sequences", metavar="SEQ", nargs="*", help="sequences to score (default: all)"
    )
    evaluate.add_argument("--json", metavar="FILE", type=Path, help="also write the scores")
    evaluate.add_argument(
        "--per-frame", action="store_true", help="include per-frame J and F in --json"
    )
    evaluate.set_defaults(handler=cmd_eval)

    demo = commands.add_parser(
        "demo",
        help="track a synthetic video end to end and score it (no download)",
        description="Render a synthetic video with known ground truth, track its objects "
        "from their first-frame masks (one from a box), write every output and score it.",
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=Path("vidseg-demo"),
        help="output folder (default: ./vidseg-demo)",
    )
    demo.add_argument(
        "--frames",
        metavar="N",
        type=_positive_int("--frames"),
        default=None,
        help="number of frames to render",
    )
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    demo.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int("--threads"),
        help="CPU threads for the engine (default: torch's choice)",
    )
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    demo.set_defaults(handler=cmd_demo)

    info = commands.add_parser(
        "info", help="describe a video", description="Print what vidseg reads from VIDEO."
    )
    info.add_argument("video", metavar="VIDEO", help="video file or folder of frames")
    info.set_defaults(handler=cmd_info)

    serve = commands.add_parser(
        "serve",
        help="open the web app: click, track, correct and export in the browser",
        description="Serve the vidseg web app. Sessions (objects, prompts, masks) are kept in "
        "--data-dir and survive restarts. Needs the web extra: pip install 'vidseg[web]'.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost)")
    serve.add_argument("--port", type=_positive_int("--port"), default=8000, help="default 8000")
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=Path("vidseg-data"),
        help="where sessions, uploads and exports are kept (default: ./vidseg-data)",
    )
    serve.add_argument(
        "--allow-dir",
        metavar="DIR",
        type=Path,
        action="append",
        default=None,
        help="a folder whose videos the page may open by path (repeatable; default: the "
        "current folder); uploads are always allowed",
    )
    serve.add_argument(
        "--max-upload-mb",
        metavar="MB",
        type=_positive_int("--max-upload-mb"),
        default=500,
        help="largest video upload accepted (default: 500)",
    )
    serve.add_argument(
        "--max-open-sessions",
        metavar="N",
        type=_positive_int("--max-open-sessions"),
        default=8,
        help="sessions held open in memory; idle ones beyond this reopen from the database "
        "when next used (default: 8)",
    )
    serve.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int("--threads"),
        help="CPU threads for the engine (default: torch's choice)",
    )
    _add_model_options(serve)  # one engine, loaded once, shared by every session
    serve.set_defaults(handler=cmd_serve)
    return parser


def _add_model_options(command: argparse.ArgumentParser) -> None:
    """--model, --device and --dtype: which engine runs, for the commands that track."""
    model = command.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="NAME|DIR",
        default="builtin",
        help="builtin (default), a transformers model (sam2.1-hiera-tiny, sam2.1-hiera-small, "
        "sam2.1-hiera-base-plus, sam2.1-hiera-large, edgetam, sam3-tracker; downloaded once "
        "when online; needs pip install 'vidseg[hf]') or a checkpoint folder",
    )
    model.add_argument(
        "--device", metavar="DEVICE", help="cpu or cuda (default: cuda when present)"
    )
    model.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="weights and activations of a transformers model (default float32; 16-bit on GPU)",
    )
    model.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML file of built-in engine settings over its defaults, e.g. "
        "'[prompts]' and 'decoder = \"learned\"' for the learned click/box decoder",
    )


def _positive_int(option: str):
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise UsageError(f"{option} '{text}': expected a whole number of at least 1")
        return int(text)

    return parse


def _frame_index(option: str):
    def parse(text: str) -> int:
        if not text.strip().isdigit():
            raise UsageError(f"{option} '{text}': expected a frame index (0, 1, 2, ...)")
        return int(text)

    return parse


# -- commands -------------------------------------------------------------------------------


def cmd_track(args: argparse.Namespace) -> int:
    from vidseg.cli.tracking import TimedFrames, run_tracking, set_threads
    from vidseg.engines.loading import load_engine
    from vidseg.io import open_frames
    from vidseg.session import TrackingSession

    if not args.prompts:
        raise UsageError(
            "no prompt given: say what to track with --mask, --point or --box (e.g. --point 120,80)"
        )
    _check_outputs_spare_input(args)
    started = time.perf_counter()
    frames = TimedFrames(open_frames(args.video))
    with frames:
        opened = time.perf_counter()
        if args.threads is not None:
            set_threads(args.threads)
        engine = load_engine(args.model, device=args.device, dtype=args.dtype, config=args.config)
        session = TrackingSession(frames, engine=engine)
        loaded = time.perf_counter()
        if args.start is not None and args.start >= session.num_frames:
            raise VidsegError(
                f"--start {args.start} is past the video: it has {session.num_frames} frames, "
                f"numbered 0 to {session.num_frames - 1}"
            )
        prompts = apply_prompts(session, args.prompts)
        prompted = time.perf_counter()
        stats = run_tracking(
            session,
            masks_dir=args.out,
            coco_path=args.coco,
            overlay_path=args.overlay,
            direction=args.direction,
            start_frame=args.start,
            max_frames=args.max_frames,
            progress=not args.quiet,
            decode_timer=frames,
        )
    print(stats.summary(), flush=True)
    if args.timings:
        stats.stages = {
            "open video": opened - started,
            "load engine": loaded - opened,
            "prompts": prompted - loaded,
            **stats.stages,
        }
        described = ", ".join(f"{k}: {' '.join(v)}" for k, v in prompts.items())
        print(f"prompts: {described}", file=sys.stderr)
        print(stats.timings(), file=sys.stderr)
    return 0


def _check_outputs_spare_input(args: argparse.Namespace) -> None:
    """Refuse outputs that would overwrite the input (a folder of PNG frames is exactly what
    the mask writer may replace) or each other."""
    from vidseg.errors import OutputError

    video = Path(args.video).expanduser().resolve()
    named = [("--out", args.out), ("--coco", args.coco), ("--overlay", args.overlay)]
    seen: dict[Path, str] = {}
    for option, path in named:
        if path is None:
            continue
        resolved = path.expanduser().resolve()
        if resolved == video or resolved in video.parents:
            raise OutputError(
                f"{option} '{path}' would overwrite the input '{args.video}': write the "
                "outputs somewhere else"
            )
        if resolved in seen:
            raise OutputError(
                f"{option} and {seen[resolved]} both name '{path}': give each output its own name"
            )
        seen[resolved] = option


def cmd_eval(args: argparse.Namespace) -> int:
    from vidseg.evaluation import evaluate_directories

    report = evaluate_directories(args.pred_dir, args.gt_dir, args.sequences or None)
    print(report.to_markdown())
    mean = report.mean()
    print(
        f"J&F {_fmt(mean['J&F'])} ({_pct(mean['J&F'])}), J {_fmt(mean['J-Mean'])}, "
        f"F {_fmt(mean['F-Mean'])} over {len(report.all_objects())} objects in "
        f"{len(report.sequences)} sequence{'s' if len(report.sequences) != 1 else ''}"
    )
    if args.json is not None:
        from vidseg.outputs._atomic import PendingFile

        pending = PendingFile(args.json)
        try:
            pending.temp_path.write_text(json.dumps(report.to_dict(args.per_frame), indent=1))
            pending.commit()
        except BaseException:
            pending.discard()
            raise
        print(f"scores written to {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vidseg.demo.run import DEFAULT_NUM_FRAMES, run_demo

    report = run_demo(
        args.out,
        num_frames=args.frames or DEFAULT_NUM_FRAMES,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
    )
    print(report.to_text())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vidseg.io import open_frames

    with open_frames(args.video) as source:
        info = source.info
        rows = [("input", str(args.video))]
        kind = "frame folder" if info.frame_names is not None else "video file"
        rows.append(("kind", kind))
        rows.append(("size", f"{info.width}x{info.height}"))
        rows.append(("frames", str(info.num_frames)))
        rows.append(("fps", f"{info.fps:g}"))
        duration = info.num_frames / info.fps if info.fps > 0 else math.nan
        rows.append(("duration", f"{duration:.2f} s"))
        rows.append(("rotation", f"{info.rotation} degrees"))
        if info.frame_names is None:
            rows += _container_facts(Path(args.video))
        else:
            rows.append(("first frame", info.frame_names[0]))
            rows.append(("last frame", info.frame_names[-1]))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name + ':':<{width + 1}} {value}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from vidseg.web import run_server
    except ImportError as exc:
        raise VidsegError(
            f"the web app needs the web extra ({exc.name} is missing): pip install 'vidseg[web]'"
        ) from exc
    from vidseg.cli.tracking import set_threads

    allow_dirs = args.allow_dir or [Path.cwd()]
    for folder in allow_dirs:
        if not folder.is_dir():
            raise VidsegError(f"--allow-dir '{folder}' is not a folder: name an existing folder")
    from vidseg.engines.loading import load_engine

    if args.threads is not None:
        set_threads(args.threads)
    engine = load_engine(args.model, device=args.device, dtype=args.dtype, config=args.config)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.warning(
            "serving on %s: anyone who can reach it can open the videos in %s, with no "
            "password; use the default 127.0.0.1 unless you mean that",
            args.host,
            ", ".join(map(str, allow_dirs)),
        )
    print(
        f"vidseg web app on http://{args.host}:{args.port}/ (data in {args.data_dir}); "
        "Ctrl-C stops it",
        flush=True,
    )
    run_server(
        args.data_dir,
        host=args.host,
        port=args.port,
        allow_dirs=allow_dirs,
        max_upload_mb=args.max_upload_mb,
        max_open_sessions=args.max_open_sessions,
        engine=engine,
    )
    return 0


def _container_facts(path: Path) -> list[tuple[str, str]]:
    """Codec and container names, as FFmpeg reports them (empty if it cannot say)."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            codec = stream.codec_context
            facts = [
                ("codec", f"{codec.name} ({codec.codec.long_name})"),
                ("pixel format", str(codec.pix_fmt or "unknown")),
                ("container", f"{container.format.name} ({container.format.long_name})"),
            ]
            if container.bit_rate:
                facts.append(("bit rate", f"{container.bit_rate / 1000:.0f} kb/s"))
            return facts
    except Exception:  # the facts are extras: never fail `info` over them
        return []


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


# -- entry point ----------------------------------------------------------------------------


def _error(message: str, status: int) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vidseg`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status."""
    logging.basicConfig(format=f"{PROG}: warning: %(message)s", level=logging.WARNING)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except UsageError as exc:
        return _error(str(exc), EXIT_USAGE_ERROR)
    except VidsegError as exc:
        return _error(str(exc), EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        return _error("interrupted; unfinished outputs were discarded", EXIT_INTERRUPTED)
    except BrokenPipeError:
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
