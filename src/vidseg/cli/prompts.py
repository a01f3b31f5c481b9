"""Prompts given on the command line: ``--mask``, ``--point``, ``--neg``, ``--box`` and ``--obj``.

``--obj ID`` sets the object id of the prompt options that follow it (1 until the first
``--obj``), so the options are kept in command-line order by one argparse action that appends
:class:`PromptSpec` records to ``namespace.prompts``.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_prompt_options(parser)
>>> args = parser.parse_args(["--obj", "2", "--point", "10,20@5", "--box", "1,2,30,40"])
>>> [(p.kind, p.obj_id, p.frame, p.values) for p in args.prompts]
[('point', 2, 5, (10.0, 20.0)), ('box', 2, 0, (1.0, 2.0, 30.0, 40.0))]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vidseg.errors import PromptError, VidsegError

if TYPE_CHECKING:
    from vidseg.session import TrackingSession

MAX_OBJECT_ID = 255

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_FRAME = r"(?:@(?P<frame>\d+))?"
_POINT_RE = re.compile(rf"^\s*(?P<values>{_NUMBER}\s*,\s*{_NUMBER})\s*{_FRAME}\s*$")
_BOX_RE = re.compile(
    rf"^\s*(?P<values>{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER}\s*,\s*{_NUMBER})\s*{_FRAME}\s*$"
)

EXPECTED = {
    "mask": "MASK.png or MASK.png@FRAME",
    "point": "X,Y or X,Y@FRAME",
    "neg": "X,Y or X,Y@FRAME",
    "box": "X1,Y1,X2,Y2 or X1,Y1,X2,Y2@FRAME",
}


class UsageError(Exception):
    """A mistake in the command line itself (exit status 2)."""


@dataclass(frozen=True)
class PromptSpec:
    """One prompt option as given: ``kind`` is mask, point, neg or box."""

    kind: str
    raw: str  # the option's argument, for error messages
    obj_id: int  # the --obj in force when the option was given
    obj_explicit: bool  # whether an --obj preceded it (a one-object mask then takes that id)
    frame: int
    values: tuple[float, ...] = ()
    path: Path | None = None

    @property
    def option(self) -> str:
        return f"--{self.kind}"

    def context(self) -> str:
        """How error messages name this option, e.g. ``--point '3,4@2'``."""
        return f"{self.option} '{self.raw}'"


def parse_prompt(kind: str, raw: str, obj_id: int = 1, obj_explicit: bool = False) -> PromptSpec:
    """Parse one prompt option's argument; raise :class:`UsageError` naming the expected form.

    >>> spec = parse_prompt("point", "3.5,4@7")
    >>> spec.frame, spec.values
    (7, (3.5, 4.0))
    >>> parse_prompt("point", "3")
    Traceback (most recent call last):
    ...
    vidseg.cli.prompts.UsageError: --point '3': expected X,Y or X,Y@FRAME
    """
    bad = UsageError(f"--{kind} '{raw}': expected {EXPECTED[kind]}")
    if kind == "mask":
        path_text, frame = raw, 0
        head, sep, tail = raw.rpartition("@")
        if sep and tail.strip().isdigit():
            path_text, frame = head, int(tail)
        elif sep and not tail.strip():
            raise bad  # "mask.png@": the frame is missing
        if not path_text.strip():
            raise bad
        return PromptSpec(kind, raw, obj_id, obj_explicit, frame, path=Path(path_text))
    pattern = _BOX_RE if kind == "box" else _POINT_RE
    match = pattern.match(raw)
    if match is None:
        raise bad
    values = tuple(float(v) for v in match["values"].split(","))
    frame = int(match["frame"]) if match["frame"] is not None else 0
    return PromptSpec(kind, raw, obj_id, obj_explicit, frame, values=values)


def parse_object_id(raw: str) -> int:
    """Parse ``--obj``'s argument: a whole number from 1 to 255."""
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_OBJECT_ID:
        raise UsageError(f"--obj '{raw}': expected an object id, a whole number from 1 to 255")
    return int(text)


class _PromptAction(argparse.Action):
    """Appends each prompt option, in command-line order, to ``namespace.prompts``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        prompts = list(getattr(namespace, "prompts", None) or [])
        obj_id = getattr(namespace, "obj", None)
        explicit = obj_id is not None
        if self.dest == "obj":
            namespace.obj = parse_object_id(values)
            return
        prompts.append(parse_prompt(self.dest, values, obj_id or 1, explicit))
        namespace.prompts = prompts


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--obj``, ``--mask``, ``--point``, ``--neg`` and ``--box`` to ``parser``."""
    group = parser.add_argument_group(
        "prompts",
        "Say which objects to track. Each option may be repeated; @FRAME (default 0) is the "
        "frame the prompt is on. --obj ID applies to the prompt options after it.",
    )
    group.add_argument(
        "--obj",
        metavar="ID",
        dest="obj",
        action=_PromptAction,
        default=None,
        help="object id (1-255) of the prompt options that follow (default 1)",
    )
    group.add_argument(
        "--mask",
        metavar="MASK.png[@FRAME]",
        dest="mask",
        action=_PromptAction,
        help="a PNG mask of the frame's size: each distinct non-zero value is an object id "
        "(a 0/255 mask is one object: the current --obj id)",
    )
    group.add_argument(
        "--point",
        metavar="X,Y[@FRAME]",
        dest="point",
        action=_PromptAction,
        help="a click on the object, in pixels",
    )
    group.add_argument(
        "--neg",
        metavar="X,Y[@FRAME]",
        dest="neg",
        action=_PromptAction,
        help="a click on something that is NOT the object (refines a point, box or mask)",
    )
    group.add_argument(
        "--box",
        metavar="X1,Y1,X2,Y2[@FRAME]",
        dest="box",
        action=_PromptAction,
        help="a box around the object, in pixels",
    )
    parser.set_defaults(prompts=[])


def read_label_png(path: Path, what: str | None = None) -> np.ndarray:
    """Read a mask PNG (or any image) as a 2-D integer label map.

    Palette PNGs give their index values, grey images their values, and grey+alpha, RGB or
    RGBA images their first channel. Errors start with ``what`` (default: the path).
    """
    what = what or f"cannot read mask '{path}'"
    try:
        with Image.open(path) as image:
            if image.mode == "1":
                image = image.convert("L")
            array = np.asarray(image)
    except FileNotFoundError:
        raise PromptError(f"{what}: file does not exist") from None
    except UnidentifiedImageError:
        raise PromptError(f"{what}: it is not an image (give a PNG)") from None
    except (OSError, ValueError) as exc:
        raise PromptError(f"{what}: {exc}") from None
    if array.ndim == 3:
        array = array[..., 0]
    if array.ndim != 2:
        raise PromptError(f"{what}: expected a 2-D image, got shape {array.shape}")
    return array


def mask_objects(spec: PromptSpec, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Split a mask image into ``{object id: boolean mask}``.

    Distinct non-zero values are object ids; a mask holding only 255 (a 0/255 mask), or a
    single value after an explicit ``--obj``, is one object with the current ``--obj`` id.
    """
    values = [int(v) for v in np.unique(labels) if v != 0]
    if not values:
        raise PromptError(
            f"{spec.context()}: the mask is empty (every pixel is 0): mark the object with "
            "non-zero pixels"
        )
    if values == [255] or (len(values) == 1 and spec.obj_explicit):
        return {spec.obj_id: labels == values[0]}
    too_big = [v for v in values if v > MAX_OBJECT_ID]
    if too_big:
        raise PromptError(
            f"{spec.context()}: value {too_big[0]} is not an object id: mask values must be "
            "object ids from 1 to 255 (or a 0/255 mask for one object)"
        )
    return {v: labels == v for v in values}


def apply_prompts(session: TrackingSession, specs: Sequence[PromptSpec]) -> dict[int, list[str]]:
    """Give every prompt to the session; errors name the option that caused them.

    For each object on each frame: its mask first, then its box, then all its clicks at once
    (positive and negative), so clicks refine the mask or box. Returns, per object id, a
    description of its prompts (e.g. ``["mask@0", "box@5"]``).
    """
    if not specs:
        raise UsageError(
            "no prompt given: say what to track with --mask, --point or --box (e.g. --point 120,80)"
        )
    # Group by (frame, object), keeping the first-given order of groups.
    groups: dict[tuple[int, int], list[PromptSpec]] = {}
    expanded: list[tuple[PromptSpec, int, np.ndarray | None]] = []
    for spec in specs:
        if spec.kind == "mask":
            assert spec.path is not None
            labels = read_label_png(spec.path, spec.context())
            for obj_id, mask in mask_objects(spec, labels).items():
                expanded.append((spec, obj_id, mask))
        else:
            expanded.append((spec, spec.obj_id, None))
    masks: dict[tuple[int, int], tuple[PromptSpec, np.ndarray]] = {}
    for spec, obj_id, mask in expanded:
        key = (spec.frame, obj_id)
        groups.setdefault(key, [])
        if mask is not None:
            masks[key] = (spec, mask)
        else:
            groups[key].append(spec)

    described: dict[int, list[str]] = {}
    for (frame, obj_id), clicks in groups.items():
        boxes = [s for s in clicks if s.kind == "box"]
        points = [s for s in clicks if s.kind in ("point", "neg")]
        if (frame, obj_id) in masks and boxes:
            raise UsageError(
                f"{boxes[-1].context()}: object {obj_id} already has a mask on frame {frame}; "
                "give either a mask or a box for an object on a frame"
            )
        kinds = []
        if (frame, obj_id) in masks:
            spec, mask = masks[(frame, obj_id)]
            _call(spec, session.add_mask, frame, obj_id, mask)
            kinds.append("mask")
        if boxes:
            _call(boxes[-1], session.add_box, frame, obj_id, boxes[-1].values)
            kinds.append("box")
        if points:
            coords = [s.values for s in points]
            labels = [0 if s.kind == "neg" else 1 for s in points]
            width, height = session.info.width, session.info.height
            outside = [
                s for s in points if not (0 <= s.values[0] < width and 0 <= s.values[1] < height)
            ]
            _call(
                outside[0] if outside else points[0],
                session.add_points,
                frame,
                obj_id,
                coords,
                labels,
            )
            kinds.append("clicks")
        described.setdefault(obj_id, []).append("+".join(kinds) + f"@{frame}")
    return dict(sorted(described.items()))


def _call(spec: PromptSpec, method: Any, *args: Any) -> None:
    try:
        method(*args)
    except VidsegError as exc:
        raise type(exc)(f"{spec.context()}: {exc}") from None
