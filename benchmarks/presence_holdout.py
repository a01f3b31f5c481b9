"""Choose presence settings without val: the train sequences that ``train_tracker.py
--hold-out`` leaves out (every fifth), tracked by weights trained without them, as they are
and with the synthetic gaps of ``occlusion.py`` (an occluder over the object, or a cut to
another sequence). This is how the re-identification check (``[presence] min_object_match``)
was chosen and set.

    python training/train_tracker.py --hold-out --output /tmp/hold_out.pt   # about 45 min
    python benchmarks/presence_holdout.py --weights /tmp/hold_out.pt --settings "0;0.3"
    python benchmarks/presence_holdout.py --fold 3 --weights /tmp/fold3.pt   # --hold-out 3
    python benchmarks/presence_holdout.py --weights /tmp/a.pt,/tmp/b.pt \
        --settings "min_object_match=0.3,match_max_area=0.7;min_object_match=0.3,match_max_area=1"

Prints, per weights and ``[presence]`` setting (a bare number is ``min_object_match``; 0 = the
check off): J&F on the clips as they are, and J&F, absent accuracy and re-acquired J on the
clips with gaps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "training"))
from baselines import setting_value  # noqa: E402
from common import DEFAULT_DAVIS, open_sequence, read_sequence_list  # noqa: E402
from occlusion import occluded_clip, score  # noqa: E402
from train_tracker import without_held_out  # noqa: E402


def held_out(davis_root: Path, fold: int = 4) -> list[str]:
    """The sequences ``train_tracker.py --hold-out FOLD`` trains without (its own rule)."""
    train = read_sequence_list(davis_root, "train")
    kept = set(without_held_out(train, fold))
    return [name for name in train if name not in kept]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", required=True, help="weights trained with --hold-out (comma-separated)"
    )
    parser.add_argument(
        "--settings",
        default="0;0.3",
        help="settings separated by ';', each a [presence] min_object_match value or "
        "key=value pairs separated by ',' (a bare key is a [presence] setting, SECTION.key "
        "one of another section)",
    )
    parser.add_argument(
        "--fold", type=int, default=4, help="the hold-out fold the weights were trained without"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DAVIS)
    parser.add_argument(
        "--sequences", help="comma-separated, among the fold's held-out sequences (default: all)"
    )
    args = parser.parse_args(argv)
    from vidseg.engines.builtin import BuiltinConfig, BuiltinEngine
    from vidseg.evaluation import evaluate_sequence, read_mask
    from vidseg.session import TrackingSession

    engines = {}
    for weights in args.weights.split(","):
        for setting in args.settings.split(";"):
            overrides = setting_overrides(setting)
            overrides.setdefault("tracker", {})["weights"] = weights
            engine = BuiltinEngine(BuiltinConfig.load(overrides=overrides))
            label = setting if "," not in args.weights else f"{Path(weights).stem} {setting}"
            engines[label] = engine
    train = sorted(read_sequence_list(args.data, "train"))
    results: dict[str, dict[str, list]] = {label: {"plain": [], "gaps": []} for label in engines}
    chosen = args.sequences.split(",") if args.sequences else None
    for number, sequence in enumerate(held_out(args.data, args.fold)):
        if chosen is not None and sequence not in chosen:
            continue  # numbered as in the whole fold, so each gap stays where it was
        frames = list(open_sequence(args.data, sequence))
        folder = args.data / "Annotations" / "480p" / sequence
        masks = [read_mask(folder / f"{i:05d}.png") > 0 for i in range(len(frames))]
        other = train[(train.index(sequence) + 1) % len(train)]
        filler = list(open_sequence(args.data, other, max_frames=30))
        for kind in ("plain", "occluder", "cut"):
            if kind == "plain":
                clip, truths, gap = frames, masks, None
            else:
                rng = np.random.default_rng(number * 2 + (kind == "cut"))
                clip, truths, gap = occluded_clip(frames, masks, filler, kind, rng)
            line = [f"{sequence} {kind}:"]
            for setting, engine in engines.items():
                session = TrackingSession(clip, engine=engine)
                session.add_mask(0, 1, truths[0])
                predictions = [result.masks[1] for result in session.propagate()]
                if gap is None:
                    jf = evaluate_sequence(predictions, list(truths)).jf
                    results[setting]["plain"].append(jf)
                    line.append(f"{setting}: {100 * jf:.1f}")
                else:
                    scores = score(predictions, list(truths), gap)
                    results[setting]["gaps"].append(scores)
                    line.append(f"{setting}: {100 * scores['J&F']:.1f}/{scores['absent']:.2f}")
            print(" ".join(line), file=sys.stderr, flush=True)
    print("| setting | J&F as they are | J&F with gaps | absent accuracy | re-acquired J |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for setting, rows in results.items():
        gaps = rows["gaps"]
        print(
            f"| {setting} | {100 * np.mean(rows['plain']):.1f} "
            f"| {100 * np.mean([g['J&F'] for g in gaps]):.1f} "
            f"| {100 * np.mean([g['absent'] for g in gaps]):.1f}% "
            f"| {100 * np.mean([g['reacquired_j'] for g in gaps]):.1f} |"
        )


def setting_overrides(setting: str) -> dict[str, dict]:
    """Config overrides from ``0.3`` (``[presence] min_object_match``) or
    ``key=value,key=value``, a bare key being a ``[presence]`` setting and ``SECTION.key``
    one of another section.

    >>> setting_overrides("0.3")
    {'presence': {'min_object_match': 0.3}}
    >>> setting_overrides("min_object_match=0.3,memory.remember_absent=false")
    {'presence': {'min_object_match': 0.3}, 'memory': {'remember_absent': False}}
    """
    if "=" not in setting:
        return {"presence": {"min_object_match": float(setting)}}
    overrides: dict[str, dict] = {}
    for item in setting.split(","):
        name, _, value = item.partition("=")
        section, _, key = name.strip().rpartition(".")
        overrides.setdefault(section or "presence", {})[key] = setting_value(value.strip())
    return overrides


if __name__ == "__main__":
    main()
