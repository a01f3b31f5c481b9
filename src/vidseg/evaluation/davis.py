"""The DAVIS semi-supervised protocol over sequences and folders of PNG masks.

What is scored, as in the official toolkit (``davis2017-evaluation``):

- objects are the ids found in the ground truth (any frame); a ground truth that only holds
  the values 0 and 255 (DAVIS 2016) is one object, id 1, and the prediction's values 1 and 255
  then both mean that object;
- frames ``1 .. n-2`` are scored: the first frame (the prompt) and the last are left out
  (a sequence of fewer than 3 frames has all its frames scored instead, to give a figure);
- each object gets J and F statistics (mean, recall, decay) over those frames;
- the report's means are over all objects of all sequences (per object first, then the mean
  over objects, which is what DAVIS publishes); ``J&F`` is the mean of J-mean and F-mean.
  For DAVIS 2016 (one object per sequence) this is the mean over sequences; the report also
  gives the mean of per-sequence means (:attr:`EvaluationReport.sequence_mean`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg.evaluation.errors import EvaluationError
from vidseg.evaluation.metrics import (
    DEFAULT_BOUND_TH,
    Statistics,
    boundary_f_measure,
    davis_statistics,
    region_similarity,
)

_MEASURES = ("J&F", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class ObjectScores:
    """One object's per-frame J and F over the scored frames, and their statistics."""

    object_id: int
    frames: np.ndarray  # indices of the scored frames
    j_per_frame: np.ndarray
    f_per_frame: np.ndarray
    j: Statistics = field(init=False)
    f: Statistics = field(init=False)

    def __post_init__(self) -> None:
        self.j = davis_statistics(self.j_per_frame)
        self.f = davis_statistics(self.f_per_frame)

    @property
    def jf(self) -> float:
        return (self.j.mean + self.f.mean) / 2

    def measures(self) -> dict[str, float]:
        """The DAVIS figures of this object, keyed as in the toolkit's CSV."""
        return {
            "J&F": self.jf,
            "J-Mean": self.j.mean,
            "J-Recall": self.j.recall,
            "J-Decay": self.j.decay,
            "F-Mean": self.f.mean,
            "F-Recall": self.f.recall,
            "F-Decay": self.f.decay,
        }

    def to_dict(self, per_frame: bool = False) -> dict:
        out: dict = {"object_id": self.object_id, **self.measures()}
        if per_frame:
            out["frames"] = self.frames.tolist()
            out["J"] = self.j_per_frame.tolist()
            out["F"] = self.f_per_frame.tolist()
        return out


def _mean_measures(objects: Sequence[ObjectScores]) -> dict[str, float]:
    if not objects:
        return dict.fromkeys(_MEASURES, math.nan)
    table = np.array([[o.measures()[k] for k in _MEASURES[1:]] for o in objects])
    means = dict(zip(_MEASURES[1:], table.mean(axis=0).tolist(), strict=True))
    return {"J&F": (means["J-Mean"] + means["F-Mean"]) / 2, **means}


@dataclass
class SequenceScores:
    """The scores of every object of one sequence."""

    name: str
    num_frames: int
    objects: dict[int, ObjectScores]

    def measures(self) -> dict[str, float]:
        """The mean over this sequence's objects (NaN when the ground truth has none)."""
        return _mean_measures(list(self.objects.values()))

    @property
    def jf(self) -> float:
        return self.measures()["J&F"]

    @property
    def j_mean(self) -> float:
        return self.measures()["J-Mean"]

    @property
    def f_mean(self) -> float:
        return self.measures()["F-Mean"]

    def to_dict(self, per_frame: bool = False) -> dict:
        return {
            "name": self.name,
            "num_frames": self.num_frames,
            **self.measures(),
            "objects": {str(k): o.to_dict(per_frame) for k, o in self.objects.items()},
        }


@dataclass
class EvaluationReport:
    """Scores of several sequences. :meth:`mean` is the DAVIS figure: the mean over all objects
    of all sequences."""

    sequences: dict[str, SequenceScores]

    def all_objects(self) -> list[tuple[str, ObjectScores]]:
        return [(name, o) for name, seq in self.sequences.items() for o in seq.objects.values()]

    def mean(self) -> dict[str, float]:
        """The mean of each measure over all objects (DAVIS's global figures)."""
        return _mean_measures([o for _, o in self.all_objects()])

    def sequence_mean(self) -> dict[str, float]:
        """The mean over sequences of the per-sequence means (equal to :meth:`mean` when every
        sequence holds one object, as in DAVIS 2016); sequences without objects are skipped."""
        rows = [s.measures() for s in self.sequences.values() if s.objects]
        if not rows:
            return dict.fromkeys(_MEASURES, math.nan)
        return {k: float(np.mean([r[k] for r in rows])) for k in _MEASURES}

    @property
    def jf(self) -> float:
        return self.mean()["J&F"]

    def to_dict(self, per_frame: bool = False) -> dict:
        return {
            "protocol": "DAVIS semi-supervised: frames 1..n-2, bound_th 0.008, "
            "mean over all objects",
            "mean": self.mean(),
            "num_objects": len(self.all_objects()),
            "sequences": {k: s.to_dict(per_frame) for k, s in self.sequences.items()},
        }

    def to_markdown(self, digits: int = 3) -> str:
        """A table with one row per object and a last row with the mean over all objects."""

        def fmt(values: dict[str, float]) -> str:
            return " | ".join(f"{values[k]:.{digits}f}" for k in _MEASURES)

        lines = [
            "| Sequence | Object | " + " | ".join(_MEASURES) + " |",
            "| --- | ---: | " + " | ".join("---:" for _ in _MEASURES) + " |",
        ]
        for name, obj in self.all_objects():
            lines.append(f"| {name} | {obj.object_id} | {fmt(obj.measures())} |")
        n = len(self.all_objects())
        lines.append(f"| **Mean** | {n} objects | {fmt(self.mean())} |")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def _label_map(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    if mask.ndim == 3 and mask.shape[2] in (1, 2, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise EvaluationError(f"{what} must be a 2-D label map, got shape {mask.shape}")
    return mask


def evaluate_sequence(
    pred_masks: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    *,
    name: str = "sequence",
    bound_th: float = DEFAULT_BOUND_TH,
) -> SequenceScores:
    """Score one sequence: ``pred_masks[i]`` and ``gt_masks[i]`` are label maps of frame ``i``
    (0 = background, k = object k; bool masks are object 1; a 2-value 0/255 ground truth is
    object 1). Both may be lazy sequences: frames are read one at a time, the ground truth
    twice (once to find its objects)."""
    n = len(gt_masks)
    if len(pred_masks) != n:
        raise EvaluationError(
            f"{name}: {len(pred_masks)} predicted frames for {n} ground truth frames: "
            "give one prediction per frame"
        )
    values: set[int] = set()
    for i in range(n):
        values.update(np.unique(_label_map(gt_masks[i], f"{name}: ground truth {i}")).tolist())
    binary = values <= {0, 255} and 255 in values
    ids = [1] if binary else sorted(v for v in values if v != 0)
    frames = np.arange(1, n - 1) if n >= 3 else np.arange(n)

    j = np.zeros((len(ids), len(frames)))
    f = np.zeros((len(ids), len(frames)))
    for col, i in enumerate(frames):
        gt = _label_map(gt_masks[i], f"{name}: ground truth {i}")
        pred = _label_map(pred_masks[i], f"{name}: prediction {i}")
        if pred.shape != gt.shape:
            raise EvaluationError(
                f"{name}: frame {i}: prediction size {pred.shape[1]}x{pred.shape[0]} differs "
                f"from ground truth size {gt.shape[1]}x{gt.shape[0]}"
            )
        for row, k in enumerate(ids):
            if binary:
                g, p = gt != 0, (pred == 1) | (pred == 255)
            else:
                g, p = gt == k, pred == k
            j[row, col] = region_similarity(p, g)
            f[row, col] = boundary_f_measure(p, g, bound_th)
    objects = {k: ObjectScores(k, frames.copy(), j[row], f[row]) for row, k in enumerate(ids)}
    return SequenceScores(name=name, num_frames=n, objects=objects)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a PNG mask as a 2-D uint8 (or wider) label map: palette indices for palette PNGs,
    channel 0 for grey+alpha, RGB and RGBA PNGs."""
    try:
        with Image.open(path) as image:
            if image.mode == "1":
                image = image.convert("L")
            array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read mask {path}: {error}") from error
    if array.ndim == 3:
        array = array[..., 0]
    return array


class _MaskFiles(Sequence):
    """A lazy sequence of masks read from PNG files."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return _MaskFiles(self.paths[index])
        return read_mask(self.paths[index])


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _pair_files(name: str, pred_dir: Path, gt_dir: Path) -> tuple[list[Path], list[Path]]:
    if not pred_dir.is_dir():
        raise EvaluationError(f"{name}: prediction folder {pred_dir} does not exist")
    gt_files = _pngs(gt_dir)
    if not gt_files:
        raise EvaluationError(f"{name}: no PNG masks in ground truth folder {gt_dir}")
    pred_files = [pred_dir / p.name for p in gt_files]
    missing = [p for p in pred_files if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EvaluationError(
            f"{name}: missing prediction {missing[0]}{more}: every ground truth frame needs a "
            "prediction PNG of the same name"
        )
    return pred_files, gt_files


def evaluate_directories(
    pred_dir: str | Path,
    gt_dir: str | Path,
    sequences: Iterable[str] | None = None,
    *,
    bound_th: float = DEFAULT_BOUND_TH,
) -> EvaluationReport:
    """Score folders of PNG masks, matched to the ground truth by file name.

    Two layouts: ``DIR/<sequence>/*.png`` (the sequences are ``sequences``, or every
    subfolder of ``gt_dir`` holding PNGs) or a single sequence ``DIR/*.png`` (named after
    ``gt_dir``). Every ground truth file needs a prediction; extra predictions are ignored.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"ground truth folder {gt_dir} does not exist")
    if sequences is not None:
        names = list(sequences)
        for seq in names:
            if not (gt_dir / seq).is_dir():
                raise EvaluationError(f"no ground truth folder {gt_dir / seq} for sequence {seq}")
        pairs = {seq: (pred_dir / seq, gt_dir / seq) for seq in names}
    elif _pngs(gt_dir):
        pairs = {gt_dir.name: (pred_dir, gt_dir)}
    else:
        subdirs = sorted(d for d in gt_dir.iterdir() if d.is_dir() and _pngs(d))
        if not subdirs:
            raise EvaluationError(
                f"no PNG masks in {gt_dir} nor in any of its subfolders: point at "
                "DIR/<sequence>/*.png or DIR/*.png"
            )
        pairs = {d.name: (pred_dir / d.name, d) for d in subdirs}

    report = EvaluationReport(sequences={})
    for seq, (pred_seq, gt_seq) in pairs.items():
        pred_files, gt_files = _pair_files(seq, pred_seq, gt_seq)
        report.sequences[seq] = evaluate_sequence(
            _MaskFiles(pred_files), _MaskFiles(gt_files), name=seq, bound_th=bound_th
        )
    return report
