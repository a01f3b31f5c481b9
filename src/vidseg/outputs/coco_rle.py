"""Masks of a whole video in one COCO-style JSON file, as compressed RLE (pycocotools).

Layout (one video, one category)::

    {"info": {...},
     "videos": [{"id": 1, "name", "width", "height", "length", "fps"}],
     "images": [{"id", "video_id", "file_name", "frame_index", "width", "height"}],  # every frame
     "categories": [{"id": 1, "name": "object"}],
     "annotations": [{"id", "image_id", "video_id", "frame_index", "object_id",
                      "category_id": 1, "segmentation": {"size": [h, w], "counts": str},
                      "area", "bbox": [x, y, w, h], "iscrowd": 0, "score"}]}

An object absent from a frame (empty mask) has no annotation there. Image ids are frame index
+ 1 (COCO ids start at 1); ``file_name`` is the frame's name (the image stem for frame folders,
else the zero-padded index).

>>> import tempfile, numpy as np
>>> from vidseg.io import VideoInfo
>>> path = tempfile.mkdtemp() + "/masks.json"
>>> info = VideoInfo(width=6, height=4, num_frames=2, fps=24.0)
>>> mask = np.zeros((4, 6), dtype=bool)
>>> mask[1:3, 2:5] = True
>>> with CocoRleWriter(path, info) as writer:
...     writer.write(1, {3: mask, 4: np.zeros_like(mask)}, {3: 0.9, 4: 0.1})
>>> masks = read_coco_masks(path)
>>> sorted(masks), sorted(masks[1]), bool((masks[1][3] == mask).all())
([0, 1], [3], True)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from vidseg import __version__
from vidseg.errors import FrameIndexError
from vidseg.io import VideoInfo
from vidseg.outputs._atomic import PendingFile, StreamingWriter

CATEGORY_ID = 1


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A boolean (height, width) mask as COCO compressed RLE, ``counts`` as a str (for JSON).

    >>> encode_rle(np.array([[0, 1], [1, 1]], dtype=bool))
    {'size': [2, 2], 'counts': '13'}
    """
    # pycocotools reads the mask column by column, so it wants Fortran order.
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(segmentation: Mapping[str, Any]) -> np.ndarray:
    """A COCO RLE segmentation (compressed str/bytes counts, or an uncompressed list) as a
    boolean (height, width) mask.

    >>> decode_rle({"size": [2, 2], "counts": "13"}).tolist()
    [[False, True], [True, True]]
    >>> decode_rle({"size": [2, 2], "counts": [1, 3]}).tolist()
    [[False, True], [True, True]]
    """
    height, width = (int(n) for n in segmentation["size"])
    counts = segmentation["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(dict(segmentation), height, width)
    else:
        encoded = counts if isinstance(counts, bytes) else counts.encode("ascii")
        rle = {"size": [height, width], "counts": encoded}
    with warnings.catch_warnings():
        # pycocotools 2.0.x returns a Cython array that NumPy 2 warns about on conversion.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        return np.asarray(mask_utils.decode(rle), dtype=bool)


def read_coco_masks(path: str | Path) -> dict[int, dict[int, np.ndarray]]:
    """Read a file written by :class:`CocoRleWriter` as ``{frame_index: {object_id: mask}}``.

    Every frame listed in ``images`` appears, with an empty dict where no object is present.
    Decodes every mask at once: meant for tests, evaluation and short clips.
    """
    data = json.loads(Path(path).read_text())
    frame_of_image = {image["id"]: image["frame_index"] for image in data["images"]}
    masks: dict[int, dict[int, np.ndarray]] = {index: {} for index in frame_of_image.values()}
    for annotation in data["annotations"]:
        frame_index = annotation.get("frame_index", frame_of_image.get(annotation["image_id"]))
        masks.setdefault(frame_index, {})[annotation["object_id"]] = decode_rle(
            annotation["segmentation"]
        )
    return masks


class CocoRleWriter(StreamingWriter):
    """Collects each frame's masks as compressed RLE and writes the JSON file on ``close()``.

    Args:
        path: the .json file to write (replaced only once complete).
        info: the video's :class:`~vidseg.io.VideoInfo` (size, length, fps, frame names).

    Only the encoded RLE is kept in memory (a few hundred bytes per object and frame), never
    the masks. Frames may be written in any order; writing a frame again replaces it.
    """

    def __init__(self, path: str | Path, info: VideoInfo) -> None:
        self.path = Path(path)
        self.info = info
        self._pending = PendingFile(self.path)
        self._annotations: dict[int, list[dict[str, Any]]] = {}

    def write(
        self,
        frame_index: int,
        masks: Mapping[int, np.ndarray],
        scores: Mapping[int, float] | None = None,
    ) -> None:
        """Record frame ``frame_index``'s masks (``masks[obj_id]``: boolean (height, width)).

        ``scores[obj_id]`` is stored as the annotation's ``score`` (1.0 where not given).
        Objects whose mask is empty are absent on this frame and get no annotation.
        """
        self._check_open()
        info = self.info
        if not 0 <= frame_index < info.num_frames:
            raise FrameIndexError(
                f"frame index {frame_index} is out of range: the video has {info.num_frames} "
                f"frames, so valid indices are 0 to {info.num_frames - 1}"
            )
        annotations = []
        for obj_id in sorted(masks):
            mask = np.asarray(masks[obj_id])
            if mask.shape != (info.height, info.width):
                raise ValueError(
                    f"the mask of object {obj_id} on frame {frame_index} is {mask.shape}, but "
                    f"the video's frames are ({info.height}, {info.width})"
                )
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
            annotations.append(
                {
                    "object_id": int(obj_id),
                    "segmentation": {
                        "size": [info.height, info.width],
                        "counts": rle["counts"].decode("ascii"),
                    },
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "score": float(scores[obj_id]) if scores and obj_id in scores else 1.0,
                }
            )
        self._annotations[frame_index] = annotations

    def to_dict(self) -> dict[str, Any]:
        """The COCO document as it would be written now."""
        info = self.info
        names = info.frame_names or tuple(f"{i:05d}" for i in range(info.num_frames))
        images = [
            {
                "id": index + 1,
                "video_id": 1,
                "file_name": names[index],
                "frame_index": index,
                "width": info.width,
                "height": info.height,
            }
            for index in range(info.num_frames)
        ]
        annotations = []
        for frame_index in sorted(self._annotations):
            for annotation in self._annotations[frame_index]:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": frame_index + 1,
                        "video_id": 1,
                        "frame_index": frame_index,
                        "object_id": annotation["object_id"],
                        "category_id": CATEGORY_ID,
                        "segmentation": annotation["segmentation"],
                        "area": annotation["area"],
                        "bbox": annotation["bbox"],
                        "iscrowd": 0,
                        "score": annotation["score"],
                    }
                )
        return {
            "info": {
                "description": "object masks tracked by vidseg",
                "version": __version__,
                "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            "videos": [
                {
                    "id": 1,
                    "name": info.name,
                    "width": info.width,
                    "height": info.height,
                    "length": info.num_frames,
                    "fps": info.fps,
                }
            ],
            "images": images,
            "categories": [{"id": CATEGORY_ID, "name": "object"}],
            "annotations": annotations,
        }

    def _finish(self) -> None:
        with open(self._pending.temp_path, "w", encoding="utf-8") as file:
            json.dump(self.to_dict(), file, separators=(",", ":"))
        self._pending.commit()

    def _abandon(self) -> None:
        self._annotations.clear()
        self._pending.discard()
