"""A synthetic video with exact ground truth, for ``vidseg demo`` and for tests.

:func:`render_synthetic_video` draws a short clip procedurally (no download, no data files):
a textured background under a gently panning and zooming camera, and two to four textured
objects that move on smooth curved paths while rotating and changing scale. The clip is built
to be a fair test for a tracker rather than a trivial one:

* the objects have distinct colours and textures, non-convex outlines, anti-aliased edges,
  bevel shading and soft drop shadows;
* object 2 (the *crosser*) passes in front of object 1 (the *anchor*), which is then largely
  hidden: the ground truth shows only the visible part;
* one object leaves the frame for a stretch of frames and comes back (object 3, the *exiter*;
  with only two objects the crosser does it after the crossing);
* a fourth object (the *drifter*), when asked for, wanders in front of everything;
* every frame carries mild sensor noise and brightness flicker.

On the first frame every object is fully visible, apart from the others and from the frame
border, so the first frame's ground truth is a complete prompt. The scenario is laid out for
a landscape frame (it is designed at 640x360 and scaled to the size asked for) and stretched
over ``num_frames``; the crossing and the absence happen for any ``num_frames`` >= 20.
Rendering is deterministic for a given seed.

:func:`write_mp4` writes frames as an H.264 mp4 with PyAV and :func:`save_preview` tiles a few
frames (and their ground truth) into one PNG.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

__all__ = ["SyntheticVideo", "render_synthetic_video", "save_preview", "write_mp4"]

_REF_W, _REF_H = 640.0, 360.0  # the size the scenario is laid out at
_ALPHA_THRESHOLD = 0.5  # a pixel belongs to an object where its coverage is at least this

# Colours used for the ground truth in the preview, indexed by object id.
_LABEL_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25]], dtype=np.float32
)


@dataclass(frozen=True, eq=False)
class SyntheticVideo:
    """A rendered clip and its ground truth.

    ``frames`` is (T, H, W, 3) uint8 RGB; ``labels`` is (T, H, W) uint8 where value k means
    object id k is visible there and 0 means background. ``first_frames[k]`` is the first frame
    on which object k is visible (0 for every object in this scenario). ``depth_order`` lists
    the ids from back to front. ``visible_areas`` and ``amodal_areas`` are (T, K) pixel counts,
    columns in ``object_ids`` order: the object's visible pixels, and the pixels it would cover
    inside the frame if nothing were in front of it. ``colours[k]`` is the mean RGB of object
    k's texture as drawn (before lighting, shadows and noise), for checks and legends.
    """

    frames: np.ndarray
    labels: np.ndarray
    object_ids: tuple[int, ...]
    first_frames: dict[int, int]
    fps: float
    depth_order: tuple[int, ...]
    visible_areas: np.ndarray
    amodal_areas: np.ndarray
    colours: dict[int, tuple[float, float, float]]
    _alphas: dict[int, np.ndarray] = field(repr=False)
    _placements: dict[tuple[int, int], tuple[np.ndarray, tuple[int, int, int, int]]] = field(
        repr=False
    )

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def mask(self, frame_index: int, obj_id: int) -> np.ndarray:
        """The object's visible (modal) ground-truth mask on a frame, boolean (H, W)."""
        self._column(obj_id)
        return self.labels[frame_index] == obj_id

    def amodal_mask(self, frame_index: int, obj_id: int) -> np.ndarray:
        """Where the object lies on a frame whether or not something hides it, boolean (H, W).

        Clipped to the frame; the visible mask is this minus what objects in front cover.
        """
        self._column(obj_id)
        frame_index = range(self.num_frames)[frame_index]
        out = np.zeros((self.height, self.width), dtype=bool)
        placement = self._placements.get((frame_index, obj_id))
        if placement is not None:
            inv, (y0, y1, x0, x1) = placement
            alpha = _warp_roi(self._alphas[obj_id], inv, (y0, y1, x0, x1))
            out[y0:y1, x0:x1] = alpha >= _ALPHA_THRESHOLD
        return out

    def visible_fraction(self, frame_index: int, obj_id: int) -> float:
        """Visible area over amodal area on a frame (1.0 where the object is out of frame)."""
        col = self._column(obj_id)
        amodal = int(self.amodal_areas[frame_index, col])
        return 1.0 if amodal == 0 else int(self.visible_areas[frame_index, col]) / amodal

    def absent_frames(self, obj_id: int) -> tuple[int, ...]:
        """Frames after the object's first appearance on which none of it is visible."""
        col = self._column(obj_id)
        first = self.first_frames[obj_id]
        return tuple(int(t) for t in np.flatnonzero(self.visible_areas[:, col] == 0) if t > first)

    def _column(self, obj_id: int) -> int:
        try:
            return self.object_ids.index(obj_id)
        except ValueError:
            raise KeyError(f"no object with id {obj_id}; ids are {self.object_ids}") from None


# --------------------------------------------------------------------------------------------
# The scenario


@dataclass(frozen=True)
class _Role:
    name: str
    radius: float  # radius of the disc of equal area, at the reference size, in pixels
    keys: tuple[tuple[float, float, float], ...]  # (t, x, y) at the reference size
    fixed_keys: frozenset[int] = frozenset()  # keyframes whose x is not jittered (exits)
    precise_keys: frozenset[int] = frozenset()  # keyframes jittered only slightly (crossings)
    shapes: tuple[str, ...] = ("star", "blob", "bean", "polygon", "ellipse")
    scale_trend: tuple[float, float] = (1.0, 1.0)  # scale at t=0 and t=1


_ANCHOR = _Role(
    "anchor",
    60,
    ((0.0, 200, 205), (0.3, 225, 185), (0.55, 255, 195), (0.8, 285, 215), (1.0, 300, 205)),
    precise_keys=frozenset({1, 2}),
    shapes=("star", "blob", "bean", "polygon"),
)
_CROSSER = _Role(
    "crosser",
    61,
    (
        (0.0, 505, 110),
        (0.2, 420, 130),
        (0.35, 310, 170),
        (0.47, 240, 195),
        (0.62, 170, 240),
        (0.8, 120, 272),
        (1.0, 100, 278),
    ),
    precise_keys=frozenset({3}),
    shapes=("blob", "polygon", "ellipse"),
    scale_trend=(0.95, 1.12),
)
# With only two objects the crosser also leaves the frame (on the left) and comes back.
_CROSSER_EXITS = _Role(
    "crosser",
    61,
    (
        (0.0, 505, 110),
        (0.15, 400, 140),
        (0.28, 285, 180),
        (0.38, 235, 195),
        (0.5, 120, 240),
        (0.58, -95, 262),
        (0.72, -100, 250),
        (0.86, 60, 230),
        (1.0, 150, 220),
    ),
    fixed_keys=frozenset({5, 6}),
    precise_keys=frozenset({3}),
    shapes=("blob", "polygon", "ellipse"),
    scale_trend=(0.95, 1.05),
)
_EXITER = _Role(
    "exiter",
    41,
    (
        (0.0, 530, 275),
        (0.12, 615, 255),
        (0.22, 735, 235),
        (0.36, 735, 195),
        (0.46, 610, 150),
        (0.8, 505, 120),
        (1.0, 440, 112),
    ),
    fixed_keys=frozenset({2, 3}),
)
_DRIFTER = _Role(
    "drifter",
    30,
    ((0.0, 85, 70), (0.3, 210, 62), (0.55, 390, 78), (0.75, 470, 170), (1.0, 400, 295)),
)

# Per number of objects: the roles of ids 1..N, and the depth order (ids back to front).
_SCENES: dict[int, tuple[tuple[_Role, ...], tuple[int, ...]]] = {
    2: ((_ANCHOR, _CROSSER_EXITS), (1, 2)),
    3: ((_ANCHOR, _CROSSER, _EXITER), (1, 3, 2)),
    4: ((_ANCHOR, _CROSSER, _EXITER, _DRIFTER), (1, 3, 2, 4)),
}


def render_synthetic_video(
    num_frames: int = 60,
    width: int = 640,
    height: int = 360,
    num_objects: int = 3,
    seed: int = 0,
    *,
    fps: float = 24.0,
    noise: bool = True,
    preview_path: str | Path | None = None,
) -> SyntheticVideo:
    """Render the synthetic clip described in this module's docstring.

    ``num_objects`` is 2, 3 or 4 (object ids 1..num_objects). ``noise=False`` leaves out the
    sensor noise and brightness flicker. If ``preview_path`` is given, a PNG of a few frames
    and their ground truth is written there (see :func:`save_preview`).
    """
    if num_objects not in _SCENES:
        raise ValueError(f"num_objects must be 2, 3 or 4, not {num_objects}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, not {num_frames}")
    if width < 64 or height < 64:
        raise ValueError(f"the frame must be at least 64x64, not {width}x{height}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, not {fps}")

    rng = np.random.default_rng(seed)
    roles, depth_order = _SCENES[num_objects]
    sx, sy = width / _REF_W, height / _REF_H
    size_scale = min(sx, sy)
    times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    shadow_offset = np.array([5.0, 7.0]) * size_scale
    shadow_sigma = max(1.0, 3.0 * size_scale)

    background = _Background(rng, width, height, times)

    # Objects: distinct hues spread around the colour wheel, distinct textures and shapes.
    hue0 = rng.random()
    textures = list(rng.permutation(["stripes", "spots", "checker", "marble", "rings"]))
    used_shapes: list[str] = []
    objects: dict[int, _Object] = {}
    for k, role in enumerate(roles, start=1):
        hue = (hue0 + (k - 1) / num_objects + rng.uniform(-0.04, 0.04)) % 1.0
        choices = [s for s in role.shapes if s not in used_shapes] or list(role.shapes)
        shape = str(rng.choice(choices))
        used_shapes.append(shape)
        objects[k] = _Object(
            rng, role, shape, str(textures[k - 1]), hue, size_scale, sx, sy, times, shadow_sigma
        )

    # Handheld shake, shared by background and objects.
    shake = _shake(rng, times, amplitude=0.6 * size_scale)

    # Sensor noise bank and flicker.
    noise_bank = rng.standard_normal((2, height + 16, width + 16, 3), dtype=np.float32)
    noise_sigma = 2.2
    flicker = 1.0 + 0.035 * _smooth_series(rng, num_frames) + rng.normal(0, 0.008, num_frames)
    noise_offsets = rng.integers(0, 16, size=(num_frames, 2, 2))
    noise_mix = rng.uniform(0, 2 * np.pi, num_frames)
    vignette = _vignette(width, height)

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    num_obj = len(objects)
    visible = np.zeros((num_frames, num_obj), dtype=np.int64)
    amodal = np.zeros((num_frames, num_obj), dtype=np.int64)
    placements: dict[tuple[int, int], tuple[np.ndarray, tuple[int, int, int, int]]] = {}

    for t in range(num_frames):
        canvas = background.frame(t, shake[t])
        label = labels[t]
        for obj_id in depth_order:
            obj = objects[obj_id]
            inv, roi = obj.placement(t, shake[t], width, height)
            if roi is None:
                continue
            placements[(t, obj_id)] = (inv, roi)
            # Soft drop shadow onto whatever lies below, then the object itself.
            s_inv = inv.copy()
            s_inv[:, 2] -= s_inv[:, :2] @ shadow_offset
            s_roi = _roi_for(
                obj.center(t, shake[t]) + shadow_offset,
                obj.reach(t) + obj.shadow_margin,
                width,
                height,
            )
            if s_roi is not None:
                sy0, sy1, sx0, sx1 = s_roi
                canvas[sy0:sy1, sx0:sx1] *= _warp_roi(obj.shade, s_inv, s_roi, border=1.0)
            y0, y1, x0, x1 = roi
            a = _warp_roi(obj.alpha, inv, roi)
            rgb = _warp_roi(obj.rgb, inv, roi)
            region = canvas[y0:y1, x0:x1]
            region[...] = cv2.blendLinear(rgb, region, a, 1.0 - a)
            inside = a >= _ALPHA_THRESHOLD
            label[y0:y1, x0:x1][inside] = obj_id
            amodal[t, obj_id - 1] = int(np.count_nonzero(inside))
        # cv2 rather than numpy for the whole-frame arithmetic: several times faster here.
        if noise:
            canvas = cv2.multiply(canvas, vignette, scale=float(flicker[t]))
            (ay, ax), (by, bx) = noise_offsets[t]
            c, s = np.cos(noise_mix[t]), np.sin(noise_mix[t])
            grain = cv2.addWeighted(
                noise_bank[0, ay : ay + height, ax : ax + width],
                float(noise_sigma * c),
                noise_bank[1, by : by + height, bx : bx + width],
                float(noise_sigma * s),
                0.0,
            )
            frames[t] = cv2.add(canvas, grain, dtype=cv2.CV_8U)  # rounds and saturates
        else:
            frames[t] = cv2.multiply(canvas, vignette, dtype=cv2.CV_8U)
        for obj_id in depth_order:
            if (t, obj_id) in placements:
                y0, y1, x0, x1 = placements[(t, obj_id)][1]
                visible[t, obj_id - 1] = np.count_nonzero(label[y0:y1, x0:x1] == obj_id)

    first_frames = {}
    for k in objects:
        seen = np.flatnonzero(visible[:, k - 1] > 0)
        first_frames[k] = int(seen[0]) if seen.size else -1

    video = SyntheticVideo(
        frames=frames,
        labels=labels,
        object_ids=tuple(objects),
        first_frames=first_frames,
        fps=float(fps),
        depth_order=depth_order,
        visible_areas=visible,
        amodal_areas=amodal,
        colours={k: o.mean_colour() for k, o in objects.items()},
        _alphas={k: o.alpha for k, o in objects.items()},
        _placements=placements,
    )
    if preview_path is not None:
        save_preview(preview_path, video)
    return video


# --------------------------------------------------------------------------------------------
# Objects


class _Object:
    """One object: its texture and coverage in its own canvas, and where it is on each frame."""

    def __init__(
        self,
        rng: np.random.Generator,
        role: _Role,
        shape: str,
        texture: str,
        hue: float,
        size_scale: float,
        sx: float,
        sy: float,
        times: np.ndarray,
        shadow_sigma: float,
    ) -> None:
        self.radius = role.radius * size_scale * rng.uniform(0.93, 1.07)
        # Path: the role's keyframes, jittered a little, through a smooth cubic.
        keys = np.array(role.keys, dtype=np.float64)
        jitter = rng.uniform(-10, 10, size=(len(keys), 2))
        jitter[0] *= 0.6
        for i in role.precise_keys:
            jitter[i] *= 0.3
        for i in role.fixed_keys:
            jitter[i, 0] = 0.0
        kt = keys[:, 0]
        kx = (keys[:, 1] + jitter[:, 0]) * sx
        ky = (keys[:, 2] + jitter[:, 1]) * sy
        self.path = np.stack([_hermite(kt, kx, times), _hermite(kt, ky, times)], axis=1)
        # Rotation: a steady turn plus a wobble; scale: a trend plus a breathing.
        turn = rng.uniform(0.5, 1.4) * rng.choice([-1, 1])
        wobble = rng.uniform(0.08, 0.2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        freq = rng.uniform(0.6, 1.4, 2)
        self.angle = (
            rng.uniform(0, 2 * np.pi)
            + turn * times
            + wobble * np.sin(2 * np.pi * freq[0] * times + phase[0])
        )
        trend = role.scale_trend[0] + (role.scale_trend[1] - role.scale_trend[0]) * times
        breathe = rng.uniform(0.04, 0.09)
        self.scale = trend * (1.0 + breathe * np.sin(2 * np.pi * freq[1] * times + phase[1]))

        # The canvas is drawn at the largest size the object reaches, so warps only shrink.
        self.max_scale = float(self.scale.max())
        rho = _outline(rng, shape)
        r_canvas = self.radius * self.max_scale
        self.canvas_radius = r_canvas * float(rho.max())  # how far the outline reaches
        # Room around the outline for the blurred shadow.
        self.shadow_margin = 3.0 * shadow_sigma + 1.0
        half = int(np.ceil(self.canvas_radius + self.shadow_margin + 3))
        self.canvas_centre = np.array([half, half], dtype=np.float64)
        size = 2 * half + 1
        self.alpha = _shape_alpha(rho, size, r_canvas)
        rgb = _texture(rng, texture, size, r_canvas, hue)
        rgb *= _bevel(self.alpha, r_canvas)[..., None]
        self.rgb = np.ascontiguousarray(rgb * 255.0, dtype=np.float32)
        # What the shadow multiplies the scene below by (blurred once, here, not per frame).
        shade = 1.0 - 0.38 * cv2.GaussianBlur(self.alpha, (0, 0), shadow_sigma)
        self.shade = np.repeat(shade[..., None], 3, axis=2).astype(np.float32)

    def mean_colour(self) -> tuple[float, float, float]:
        w = self.alpha / self.alpha.sum()
        return tuple(float((self.rgb[..., c] * w).sum()) for c in range(3))

    def center(self, t: int, shake: np.ndarray) -> np.ndarray:
        return self.path[t] + shake

    def reach(self, t: int) -> float:
        """Radius, in frame pixels, of a circle around the centre that holds the object."""
        return self.canvas_radius * self.scale[t] / self.max_scale + 2.0

    def placement(
        self, t: int, shake: np.ndarray, width: int, height: int
    ) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """The frame-to-canvas affine map and the frame region the object may touch."""
        centre = self.center(t, shake)
        k = self.scale[t] / self.max_scale  # canvas pixels -> frame pixels
        c, s = np.cos(self.angle[t]), np.sin(self.angle[t])
        # canvas = centre_c + R(-angle) (frame - centre) / k
        lin = np.array([[c, s], [-s, c]]) / k
        inv = np.empty((2, 3))
        inv[:, :2] = lin
        inv[:, 2] = self.canvas_centre - lin @ centre
        return inv, _roi_for(centre, self.reach(t), width, height)


def _roi_for(
    centre: np.ndarray, reach: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    x0 = max(int(np.floor(centre[0] - reach)), 0)
    x1 = min(int(np.ceil(centre[0] + reach)) + 1, width)
    y0 = max(int(np.floor(centre[1] - reach)), 0)
    y1 = min(int(np.ceil(centre[1] + reach)) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _warp_roi(
    src: np.ndarray, inv: np.ndarray, roi: tuple[int, int, int, int], border: float = 0.0
) -> np.ndarray:
    """Sample ``src`` at canvas = inv @ frame for the frame pixels in ``roi``."""
    y0, y1, x0, x1 = roi
    m = inv.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return cv2.warpAffine(
        src,
        m,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(border, border, border, border),
    )


def _hermite(kt: np.ndarray, kv: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Cubic Hermite (Catmull-Rom-like) interpolation through keyframes at times ``kt``."""
    m = np.empty_like(kv)
    m[1:-1] = (kv[2:] - kv[:-2]) / (kt[2:] - kt[:-2])
    m[0] = (kv[1] - kv[0]) / (kt[1] - kt[0])
    m[-1] = (kv[-1] - kv[-2]) / (kt[-1] - kt[-2])
    i = np.clip(np.searchsorted(kt, t, side="right") - 1, 0, len(kt) - 2)
    h = kt[i + 1] - kt[i]
    u = (t - kt[i]) / h
    u2, u3 = u * u, u * u * u
    return (
        (2 * u3 - 3 * u2 + 1) * kv[i]
        + (u3 - 2 * u2 + u) * h * m[i]
        + (-2 * u3 + 3 * u2) * kv[i + 1]
        + (u3 - u2) * h * m[i + 1]
    )


_OUTLINE_POINTS = 360


def _outline(rng: np.random.Generator, shape: str) -> np.ndarray:
    """A closed outline as radii at evenly spaced angles, scaled to the area of a unit disc."""
    theta = np.linspace(0, 2 * np.pi, _OUTLINE_POINTS, endpoint=False)
    if shape == "star":
        n = int(rng.integers(4, 7))
        depth = rng.uniform(0.32, 0.42)
        # A raised cosine with flattened valleys gives rounded arms and rounded notches.
        wave = 0.5 + 0.5 * np.cos(n * theta)
        rho = 1.0 - depth * (1.0 - wave**1.6)
    elif shape == "blob":
        rho = np.ones_like(theta)
        for k in range(2, 6):
            rho += rng.uniform(0.05, 0.16) / (k - 1) ** 0.5 * np.cos(k * theta + rng.uniform(0, 7))
    elif shape == "bean":
        rho = 1.0 + 0.28 * np.cos(2 * theta) - 0.22 * np.cos(theta) + 0.04 * np.cos(3 * theta)
    elif shape == "polygon":
        n = int(rng.integers(3, 6))
        # A rounded n-gon with one bite taken out of a side.
        seg = 2 * np.pi / n
        local = (theta % seg) - seg / 2
        rho = np.cos(np.pi / n) / np.cos(local)
        rho = np.minimum(rho, 0.93)  # round the corners off
        kernel = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)
        padded = np.concatenate([rho[-12:], rho, rho[:12]])
        rho = np.convolve(padded, kernel / kernel.sum(), mode="valid")
        bite = rng.uniform(0, 2 * np.pi)
        d = np.angle(np.exp(1j * (theta - bite)))
        rho = rho * (1.0 - 0.3 * np.exp(-((d / 0.28) ** 2)))
    elif shape == "ellipse":
        aspect = rng.uniform(0.6, 0.75)
        rho = aspect / np.sqrt((aspect * np.cos(theta)) ** 2 + np.sin(theta) ** 2)
        rho = rho * (1.0 - 0.12 * np.exp(-((np.angle(np.exp(1j * theta)) / 0.35) ** 2)))
    else:  # pragma: no cover - programming error
        raise ValueError(shape)
    # The polygon's area is pi * mean(rho**2); make it pi so shapes of one radius match in area.
    return rho / np.sqrt(np.mean(rho**2))


def _shape_alpha(rho: np.ndarray, size: int, radius: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the outline ``rho * radius`` centred in the canvas."""
    theta = np.linspace(0, 2 * np.pi, len(rho), endpoint=False)
    pts = np.stack([np.cos(theta) * rho, np.sin(theta) * rho], axis=1) * radius
    c = (size - 1) / 2.0
    shift = 4
    poly = np.round((pts + c) * (1 << shift)).astype(np.int32)
    alpha = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(alpha, [poly], 255, lineType=cv2.LINE_AA, shift=shift)
    return alpha.astype(np.float32) / 255.0


def _bevel(alpha: np.ndarray, radius: float) -> np.ndarray:
    """Darkening towards the outline and a highlight towards the upper left: a rounded look."""
    inside = (alpha >= 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    rim = np.clip(dist / (0.22 * radius), 0.0, 1.0) ** 0.6
    size = alpha.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    light = 1.0 - 0.25 * (xx + yy)
    return ((0.62 + 0.38 * rim) * light).astype(np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _texture(
    rng: np.random.Generator, kind: str, size: int, radius: float, hue: float
) -> np.ndarray:
    """An RGB texture in [0, 1] in the object's hue, (size, size, 3) float32."""
    a = _hsv(hue, rng.uniform(0.65, 0.9), rng.uniform(0.78, 0.95))
    b = _hsv(hue + rng.uniform(-0.07, 0.07), rng.uniform(0.55, 0.85), rng.uniform(0.35, 0.55))
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) - size / 2) / radius
    warp = _fractal_noise(rng, size, size, base_cells=3, octaves=3) - 0.5
    if kind == "stripes":
        ang = rng.uniform(0, np.pi)
        u = xx * np.cos(ang) + yy * np.sin(ang) + 0.25 * warp
        m = 0.5 + 0.5 * np.tanh(4.0 * np.sin(2 * np.pi * u * rng.uniform(2.2, 3.2)))
    elif kind == "rings":
        u = np.sqrt((xx - 0.15) ** 2 + (yy + 0.1) ** 2) + 0.2 * warp
        m = 0.5 + 0.5 * np.tanh(3.5 * np.sin(2 * np.pi * u * rng.uniform(2.5, 3.5)))
    elif kind == "checker":
        ang = rng.uniform(0, np.pi / 2)
        u = xx * np.cos(ang) + yy * np.sin(ang) + 0.1 * warp
        v = -xx * np.sin(ang) + yy * np.cos(ang) + 0.1 * warp
        f = rng.uniform(1.6, 2.2)
        m = 0.5 + 0.5 * np.tanh(5.0 * np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v))
    elif kind == "marble":
        u = 3.0 * xx + 2.0 * yy + 6.0 * warp
        m = (0.5 + 0.5 * np.sin(u)) ** 2
    elif kind == "spots":
        spots = np.zeros((size, size), dtype=np.float32)
        n = int(rng.integers(18, 28))
        for _ in range(n):
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(0.06, 0.14) * radius
            cv2.ellipse(
                spots,
                (int(cx * 16), int(cy * 16)),
                (int(r * 16), int(r * rng.uniform(0.6, 1.0) * 16)),
                float(rng.uniform(0, 180)),
                0,
                360,
                1.0,
                -1,
                cv2.LINE_AA,
                4,
            )
        m = np.clip(spots, 0, 1)
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    m = m.astype(np.float32)[..., None]
    grain = 1.0 + 0.12 * (_fractal_noise(rng, size, size, base_cells=12, octaves=2) - 0.5)
    rgb = (a * (1.0 - m) + b * m) * grain[..., None]
    return np.clip(rgb, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Background, camera and noise


_PALETTES = (
    # Muted colours, darker to lighter: meadow, sand and stone, slate, dusk, clay.
    ((52, 62, 44), (96, 104, 72), (140, 138, 104), (178, 170, 140)),
    ((88, 78, 66), (138, 124, 102), (176, 164, 140), (206, 196, 176)),
    ((46, 56, 66), (84, 96, 106), (126, 134, 138), (170, 172, 168)),
    ((60, 52, 70), (104, 90, 104), (150, 128, 124), (196, 176, 160)),
    ((76, 58, 50), (122, 92, 76), (160, 130, 108), (196, 174, 150)),
)


class _Background:
    """A large textured plate seen through a camera that pans and zooms."""

    def __init__(
        self, rng: np.random.Generator, width: int, height: int, times: np.ndarray
    ) -> None:
        self.width, self.height = width, height
        pw, ph = int(width * 1.3) + 8, int(height * 1.3) + 8
        palette = np.array(_PALETTES[int(rng.integers(len(_PALETTES)))], dtype=np.float32)
        clouds = _fractal_noise(rng, ph, pw, base_cells=3, octaves=6)
        clouds = (clouds - clouds.min()) / max(float(np.ptp(clouds)), 1e-6)
        stops = np.linspace(0, 1, len(palette))
        plate = np.stack([np.interp(clouds, stops, palette[:, c]) for c in range(3)], axis=-1)
        # A second, independent field tints the plate so the colour is not one gradient.
        tint = _fractal_noise(rng, ph, pw, base_cells=2, octaves=3) - 0.5
        tint_dir = rng.normal(0, 1, 3)
        tint_dir /= np.linalg.norm(tint_dir)
        plate += 40.0 * tint[..., None] * tint_dir
        # Pebbles and streaks: small, soft, low-contrast shapes that give texture to track.
        detail = np.zeros((ph, pw), dtype=np.float32)
        unit = min(width, height)
        for _ in range(int(60 * pw * ph / (832 * 468))):
            c = (int(rng.uniform(0, pw) * 16), int(rng.uniform(0, ph) * 16))
            r = rng.uniform(0.004, 0.02) * unit
            axes = (int(r * 16), int(r * rng.uniform(0.4, 1.0) * 16))
            val = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.0))
            cv2.ellipse(
                detail, c, axes, float(rng.uniform(0, 180)), 0, 360, val, -1, cv2.LINE_AA, 4
            )
        for _ in range(4):
            p0 = rng.uniform([0, 0], [pw, ph])
            p1 = p0 + rng.normal(0, 0.4 * unit, 2)
            thickness = max(1, int(rng.uniform(0.004, 0.012) * unit))
            val = float(rng.choice([-0.6, 0.6]))
            cv2.line(detail, tuple(map(int, p0)), tuple(map(int, p1)), val, thickness, cv2.LINE_AA)
        detail = cv2.GaussianBlur(detail, (0, 0), 0.8)
        fine = _fractal_noise(rng, ph, pw, base_cells=max(8, pw // 12), octaves=2) - 0.5
        plate *= (1.0 + 0.22 * detail + 0.18 * fine)[..., None]
        self.plate = np.clip(plate, 0, 255).astype(np.float32)

        # Camera: a slow pan along a curve, a slow zoom in or out and a slight roll.
        margin_x, margin_y = (pw - width) / 2, (ph - height) / 2
        ease = 0.5 - 0.5 * np.cos(np.pi * times)
        pan_dir = rng.uniform(0, 2 * np.pi)
        pan = rng.uniform(0.45, 0.7) * np.array([margin_x, margin_y * 0.6])
        self.pan = np.stack(
            [
                pan[0] * np.cos(pan_dir) * (2 * ease - 1),
                pan[1] * np.sin(pan_dir) * (2 * ease - 1)
                + 0.15 * margin_y * np.sin(2 * np.pi * times),
            ],
            axis=1,
        )
        self.zoom = 1.0 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.06) * ease + 0.04
        self.roll = np.deg2rad(rng.uniform(-1.0, 1.0)) * ease
        self.plate_centre = np.array([(pw - 1) / 2, (ph - 1) / 2])
        self.frame_centre = np.array([(width - 1) / 2, (height - 1) / 2])

    def frame(self, t: int, shake: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.roll[t]), np.sin(self.roll[t])
        lin = np.array([[c, s], [-s, c]]) / self.zoom[t]
        m = np.empty((2, 3))
        m[:, :2] = lin
        m[:, 2] = self.plate_centre + self.pan[t] - lin @ (self.frame_centre + shake)
        return cv2.warpAffine(
            self.plate,
            m,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )


def _fractal_noise(
    rng: np.random.Generator, h: int, w: int, base_cells: int, octaves: int
) -> np.ndarray:
    """Smooth multi-scale value noise in about [0, 1], (h, w) float32."""
    out = np.zeros((h, w), dtype=np.float32)
    amp, total = 1.0, 0.0
    aspect = w / h
    for o in range(octaves):
        cells_y = max(2, int(base_cells * 2**o))
        cells_x = max(2, int(round(cells_y * aspect)))
        grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return out / total


def _smooth_series(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth random series of length n in about [-1, 1]."""
    knots = rng.uniform(-1, 1, max(2, n // 8 + 2)).astype(np.float32)
    return cv2.resize(knots[None], (n, 1), interpolation=cv2.INTER_CUBIC)[0].astype(np.float64)


def _shake(rng: np.random.Generator, times: np.ndarray, amplitude: float) -> np.ndarray:
    n = len(times)
    idx = np.arange(n, dtype=np.float64)
    out = np.zeros((n, 2))
    for axis in range(2):
        for period in (7.0, 13.0):
            out[:, axis] += np.sin(2 * np.pi * idx / period + rng.uniform(0, 2 * np.pi))
    return amplitude * out / 2.0


def _vignette(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    d2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    v = (1.0 - 0.12 * d2 / 2.0).astype(np.float32)
    return np.repeat(v[..., None], 3, axis=2)


# --------------------------------------------------------------------------------------------
# Output


def write_mp4(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) as an H.264 mp4 with PyAV; returns the path.

    The file is written under a temporary name beside ``path`` and moved into place when
    complete, so a reader never sees a half-written video. Frames with an odd width or height
    are encoded as 4:4:4 (4:2:0 needs even sizes).
    """
    import av

    path = Path(path)
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.shape != (h, w, 3):
            raise ValueError(
                f"frame {i} is {f.dtype} {f.shape}; every frame must be uint8 ({h}, {w}, 3)"
            )
    if not fps > 0:
        raise ValueError(f"fps must be positive, not {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = w, h
            stream.pix_fmt = pix_fmt
            stream.options = {"crf": "17", "preset": "fast"}
            for f in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_preview(
    path: str | Path,
    video: SyntheticVideo,
    indices: Sequence[int] | None = None,
    tile_width: int = 320,
) -> Path:
    """Save a PNG: a few frames side by side, and below each its ground truth overlaid.

    By default the frames are the first, the one where an object is most hidden by another,
    one where an object is absent, and the last.
    """
    if indices is None:
        indices = _preview_indices(video)
    indices = [range(video.num_frames)[i] for i in indices]
    scale = tile_width / video.width
    size = (tile_width, max(1, int(round(video.height * scale))))
    top, bottom = [], []
    for i in indices:
        frame = video.frames[i]
        colours = _LABEL_COLOURS[np.minimum(video.labels[i], len(_LABEL_COLOURS) - 1)]
        fg = (video.labels[i] > 0)[..., None]
        overlay = np.where(fg, 0.45 * frame + 0.55 * colours, 0.6 * frame).astype(np.uint8)
        edges = cv2.morphologyEx(video.labels[i], cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        overlay[edges > 0] = 255
        top.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        bottom.append(cv2.resize(overlay, size, interpolation=cv2.INTER_AREA))
    sep = 4
    rows = []
    for row in (top, bottom):
        tiles = []
        for j, tile in enumerate(row):
            if j:
                tiles.append(np.full((size[1], sep, 3), 255, np.uint8))
            tile = tile.copy()
            cv2.putText(
                tile,
                f"{indices[j]}",
                (6, 18),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    image = np.concatenate([rows[0], np.full((sep, rows[0].shape[1], 3), 255, np.uint8), rows[1]])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"could not encode the preview for {path}")
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _preview_indices(video: SyntheticVideo) -> list[int]:
    n = video.num_frames
    chosen = [0]
    frac = np.where(
        video.amodal_areas > 0, video.visible_areas / np.maximum(video.amodal_areas, 1), 1.0
    )
    frac[frac == 0] = 1.0  # fully hidden counts as absent, not as the crossing
    occluded = int(np.unravel_index(np.argmin(frac), frac.shape)[0])
    chosen.append(occluded)
    absent = [t for k in video.object_ids for t in video.absent_frames(k)]
    if absent:
        chosen.append(int(np.median(absent)))
    chosen.append(n - 1)
    out: list[int] = []
    for i in chosen:
        if i not in out:
            out.append(i)
    return sorted(out)
