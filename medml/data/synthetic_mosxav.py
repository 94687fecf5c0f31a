"""Synthetic X-ray angiography videos written in the official MOSXAV layout.

The renderer is a small physical caricature of a coronary angiogram: X-ray transmission through the body is
``exp(-sum of attenuations)``, so contrast-filled structures are *dark* on a brighter background (as in real XA).
Every foreground structure is drawn once as a binary mask with OpenCV primitives (``cv2.line`` / ``cv2.polylines``
with thickness); the label map is made of those same masks and the image from blurred copies of them, so the
labels are exact. What makes each class learnable and unambiguous:

* vessel (1): a tapered branching tree from the ostium that fills with contrast over time (the contrast front
  advances along the arc length from the ostium); darker along the centre line, as a cylinder is.
* contrast catheter (2): a thin tube of undiluted contrast (darker than the vessels) from the image edge to the
  vessel ostium.
* catheter (3): a thicker guiding catheter without contrast along a different path, ending in a curl: two
  radio-opaque walls around a lighter lumen (at least 5 px wide at any frame size).
* balloon (4): an inflated angioplasty balloon on a vessel (in some videos): a short, wide capsule of contrast
  (the darkest object, at least 7 px wide) with two marker bands.
* others (5): a small ring (an ECG electrode / sternal-wire caricature), only where asked (test videos).

The background has low-frequency body texture, a spine-like band with vertebrae, rib arcs, a diaphragm dome, a
beating heart shadow, vignetting and signal-dependent (Poisson-like) noise. Foreground structures move with a
periodic cardiac motion (scaling about the heart centre plus a shift) and a slow respiratory drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medml.data.mosxav import (
    ANNOTATION_EVERY,
    CLASS_NAMES,
    DEFAULT_VAL_VIDEOS,
    PALETTE,
)
from medml.io.synthetic import write_xa_cine
from medml.utils.files import atomic_path, write_json, write_text

STEP = 0.02  # vessel centre-line step in image units (1 = image side)


@dataclass
class _Branch:
    points: np.ndarray  # (n, 2) x, y in image units
    widths: np.ndarray  # (n,) in image units
    dist: np.ndarray  # (n,) arc length from the ostium
    obj: int  # VOS object id (one per main branch)


@dataclass
class _Scene:
    ostium: np.ndarray
    heart_centre: np.ndarray
    branches: list[_Branch]
    contrast_catheter: np.ndarray  # (n, 2), from the image edge to the ostium
    catheter: np.ndarray  # (n, 2), from the image edge to its curled tip
    balloon: tuple[np.ndarray, np.ndarray, float] | None  # (end a, end b, width)
    others: tuple[np.ndarray, float] | None  # (centre, radius)


def _bezier(control: np.ndarray, n: int) -> np.ndarray:
    """Points of a cubic Bezier curve through 4 control points."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = control
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _grow_tree(rng: np.random.Generator, ostium: np.ndarray, root_width: float) -> list[_Branch]:
    """A tapered branching tree: each branch is a smooth random walk that spawns thinner children."""
    branches: list[_Branch] = []
    next_obj = [1]
    # (start point, heading, width, arc length so far, depth, object id)
    todo = [(ostium, np.pi / 2 + rng.uniform(-0.5, 0.5), root_width, 0.0, 0, 1)]
    while todo:
        start, heading, width, dist0, depth, obj = todo.pop()
        length = rng.uniform(0.4, 0.55) * 0.7**depth
        n = max(3, int(length / STEP))
        bend = rng.normal(0.0, 0.02)  # a steady curvature plus small wiggles
        headings = heading + np.cumsum(rng.normal(bend, 0.09, n))
        steps = STEP * np.stack([np.cos(headings), np.sin(headings)], axis=1)
        points = np.vstack([start, start + np.cumsum(steps, axis=0)])
        widths = np.linspace(width, width * 0.7, n + 1)
        dist = dist0 + STEP * np.arange(n + 1)
        branches.append(_Branch(points, widths, dist, obj))
        if depth >= 3:
            continue
        n_children = 3 if depth == 0 else int(rng.integers(1, 4 - depth))
        for k in range(n_children):
            idx = int(rng.integers(max(1, n // 4), max(2, n - 1)))
            side = 1.0 if (k % 2 == 0) == (rng.random() < 0.5) else -1.0
            child_heading = headings[min(idx, n - 1)] + side * rng.uniform(0.4, 0.9)
            child_width = widths[idx] * rng.uniform(0.55, 0.75)
            if child_width < 0.004:
                continue
            child_obj = obj
            if depth == 0 and next_obj[0] < 5:  # main branches are the VOS objects, as in MOSXAV
                next_obj[0] += 1
                child_obj = next_obj[0]
            todo.append((points[idx], child_heading, child_width, dist[idx], depth + 1, child_obj))
    return branches


def _make_scene(rng: np.random.Generator, balloon: bool, others: bool) -> _Scene:
    ostium = np.array([rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.3)])
    branches = _grow_tree(rng, ostium, root_width=rng.uniform(0.026, 0.032))
    heart_centre = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.5, 0.65)])
    # Contrast catheter: up the aorta from the bottom edge, over an arch, into the ostium from above.
    entry = np.array([rng.uniform(0.62, 0.85), 1.02])
    contrast_catheter = _bezier(
        np.array(
            [
                entry,
                [entry[0] + rng.uniform(-0.05, 0.05), rng.uniform(0.05, 0.2)],
                [ostium[0] + rng.uniform(0.05, 0.2), ostium[1] - rng.uniform(0.1, 0.15)],
                ostium,
            ]
        ),
        80,
    )
    # Guiding catheter: from the bottom-left quadrant up to a tip away from the ostium, ending in a J curl.
    entry_c = np.array([rng.uniform(0.1, 0.4), 1.02])
    tip = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.25, 0.45)])
    shaft = _bezier(
        np.array(
            [
                entry_c,
                [entry_c[0] + rng.uniform(-0.1, 0.1), 0.75],
                [tip[0] + rng.uniform(-0.05, 0.1), tip[1] + 0.2],
                tip,
            ]
        ),
        70,
    )
    direction = shaft[-1] - shaft[-4]
    start_angle = np.arctan2(direction[1], direction[0])
    curl_angles = start_angle + np.linspace(0, 1.4 * np.pi, 30) * (1 if rng.random() < 0.5 else -1)
    curl_radius = 0.05
    centre = tip + curl_radius * np.array([np.cos(start_angle + np.pi / 2), np.sin(start_angle + np.pi / 2)])
    curl = centre + curl_radius * np.stack([np.cos(curl_angles - np.pi / 2), np.sin(curl_angles - np.pi / 2)], 1)
    catheter = np.vstack([shaft, curl[1:]])

    balloon_geom = None
    if balloon:
        # Mid-sized branches first: lesions sit downstream of the ostium, away from the catheter tip.
        candidates = (
            [b for b in branches[1:] if len(b.points) > 6 and b.widths[0] > 0.012]
            or [b for b in branches if len(b.points) > 6]
            or branches
        )
        branch = candidates[int(rng.integers(len(candidates)))]
        n = len(branch.points)
        i = int(rng.integers(n // 4, max(n // 4 + 1, (3 * n) // 4)))
        half = 0.17 / STEP / 2  # ~20 mm long at MOSXAV's scale, along the vessel
        a = branch.points[max(0, int(i - half))]
        b = branch.points[min(n - 1, int(i + half))]
        balloon_geom = (a, b, max(1.8 * float(branch.widths[i]), 0.04))  # inflated: clearly wider than the vessel
    others_geom = None
    if others:
        corner = np.array([rng.choice([0.15, 0.85]), rng.uniform(0.6, 0.85)])
        others_geom = (corner, rng.uniform(0.025, 0.035))
    return _Scene(ostium, heart_centre, branches, contrast_catheter, catheter, balloon_geom, others_geom)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    import cv2

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Static transmission of the body (H, W) in (0, 1], and a pre-blurred heart-shadow attenuation layer."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    atten = 0.1 * _smooth_noise(rng, size, 5) + 0.025 * _smooth_noise(rng, size, 20)
    # Spine: a flat-topped vertical band, slightly tilted, brightness modulated by vertebrae and disc spaces.
    spine_x = rng.uniform(0.55, 0.75) + rng.uniform(-0.08, 0.08) * (yy - 0.5)
    band = np.exp(-(((xx - spine_x) / rng.uniform(0.07, 0.1)) ** 4))
    period = rng.uniform(0.11, 0.15)
    vertebrae = 0.7 + 0.3 * np.cos(2 * np.pi * (yy / period + rng.random())) ** 8
    atten += rng.uniform(0.3, 0.45) * band * vertebrae
    # Ribs and diaphragm: soft curved shadows drawn with thick ellipse arcs and a filled dome.
    shadows = np.zeros((size, size), np.float32)
    for k in range(int(rng.integers(4, 7))):
        centre = (int(size * rng.uniform(0.3, 0.7)), int(size * (0.05 + 0.17 * k)))
        axes = (int(size * rng.uniform(0.45, 0.6)), int(size * rng.uniform(0.15, 0.25)))
        cv2.ellipse(shadows, centre, axes, rng.uniform(-10, 10), 200, 340, 0.12, max(2, size // 40))
    dome_centre = (int(size * rng.uniform(0.2, 0.5)), int(size * rng.uniform(1.05, 1.2)))
    cv2.ellipse(shadows, dome_centre, (int(size * 0.55), int(size * 0.35)), 0, 0, 360, 0.35, -1)
    atten += cv2.GaussianBlur(shadows, (0, 0), size / 60)
    radius2 = (xx - 0.5) ** 2 + (yy - 0.5) ** 2
    vignette = 1.0 - 0.45 * radius2
    transmission = np.exp(-atten) * vignette * rng.uniform(0.85, 0.95)
    heart = np.zeros((size, size), np.float32)
    cv2.ellipse(
        heart, (size // 2, int(size * 0.6)), (int(size * 0.32), int(size * 0.27)), rng.uniform(-30, 0), 0, 360, 0.12, -1
    )
    heart = cv2.GaussianBlur(heart, (0, 0), size / 25)
    return transmission.astype(np.float32), heart


def _motion(t: int, phase: float, period: float, amp: float, drift: np.ndarray) -> tuple[float, np.ndarray]:
    """(scale about the heart centre, shift in image units) of frame ``t``."""
    beat = np.sin(2 * np.pi * t / period + phase)
    scale = 1.0 + amp * beat
    shift = 0.4 * amp * np.array([beat, 0.5 * np.cos(2 * np.pi * t / period + phase)]) + drift * t
    return float(scale), shift


@dataclass
class _Appearance:
    """Per-video acquisition and device shifts of the ``hard`` option (the default video uses the neutral values)."""

    vessel_contrast: float = 1.0  # iodine concentration in the vessels (x attenuation)
    device_contrast: float = 1.0  # radio-opacity of the catheters and the balloon
    body: float = 1.0  # extra body attenuation (x transmission): thicker patients are darker
    gamma: float = 1.0  # detector / display curve
    dose_scale: float = 1.0  # photons per pixel (x): lower is noisier
    blur_scale: float = 1.0
    thin_devices: bool = False  # 1-2 px contrast catheter, 3 px guiding catheter, 4 px balloon minimum
    crossing: bool = False  # the guiding catheter's tip ends over the ostium, crossing the other structures


def _appearance(seed: int) -> _Appearance:
    rng = np.random.default_rng([seed, 99])  # its own stream: the default videos stay bit-identical
    return _Appearance(
        vessel_contrast=float(rng.uniform(0.3, 1.0)),
        device_contrast=float(rng.uniform(0.45, 1.0)),
        body=float(rng.uniform(0.45, 1.0)),
        gamma=float(rng.uniform(0.6, 1.6)),
        dose_scale=float(rng.uniform(0.2, 0.6)),
        blur_scale=float(rng.uniform(1.0, 1.8)),
        thin_devices=True,
        crossing=bool(rng.random() < 0.7),
    )


def _render(
    n_frames: int, size: int, seed: int, balloon: bool, others: bool, look: _Appearance | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames, semantic labels and VOS instance labels, each (T, H, W) uint8."""
    import cv2

    look = look or _Appearance()
    rng = np.random.default_rng(seed)
    scene = _make_scene(rng, balloon, others)
    if look.crossing:  # move the catheter's curl onto the ostium: devices overlap each other and the vessels
        offset = scene.ostium + np.array([0.03, 0.05]) - scene.catheter[-1]
        ramp = np.clip(np.linspace(-0.5, 1.0, len(scene.catheter)), 0, 1)[:, None]
        scene.catheter = scene.catheter + ramp * offset
    transmission, heart = _background(rng, size)
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(12, 18)  # ~60-75 bpm at 15 frames/s
    amp = rng.uniform(0.015, 0.03)
    drift = rng.normal(0, 0.0006, 2)  # slow respiratory drift per frame
    fill_start, fill_end = rng.uniform(0.1, 0.3), rng.uniform(0.45, 0.75)
    max_dist = max(float(b.dist[-1]) for b in scene.branches)
    vc, dc = look.vessel_contrast, look.device_contrast
    dose = rng.uniform(250, 500) * look.dose_scale  # photons per pixel at full transmission: the quantum noise
    blur = max(0.6, size / 512 * 1.2) * look.blur_scale
    shift_px = 16  # cv2 drawing with 4 fractional bits, for smooth sub-pixel motion

    def px(points: np.ndarray) -> np.ndarray:
        return np.round(points * size * shift_px).astype(np.int32)

    def thick(width_units: float) -> int:
        return max(2, int(round(width_units * size)))

    # The guiding catheter is at least 5 px wide so its lighter lumen between two dark walls shows at any size.
    cc_w, cath_w = thick(0.014), max(5, thick(0.032))
    if look.thin_devices:
        cc_w, cath_w = max(1, int(round(0.008 * size))), max(3, int(round(0.018 * size)))
    cath_lumen_w = max(1 if look.thin_devices else 2, cath_w - 2 * max(1, cath_w // 4))
    # Catheters are fixed where they enter the body and move with the heart towards their tips.
    cc_weight = np.clip(np.linspace(0, 1.6, len(scene.contrast_catheter)), 0, 1)[:, None]
    cath_weight = np.clip(np.linspace(0, 1.6, len(scene.catheter)), 0, 1)[:, None]

    frames = np.empty((n_frames, size, size), np.float32)
    labels = np.zeros((n_frames, size, size), np.uint8)
    instances = np.zeros((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        scale, shift = _motion(t, phase, period, amp, drift)

        def move(
            points: np.ndarray, weight: np.ndarray | float = 1.0, _s: float = scale, _d: np.ndarray = shift
        ) -> np.ndarray:
            moved = scene.heart_centre + (points - scene.heart_centre) * _s + _d
            return points + (moved - points) * weight

        fill = min(1.0, fill_start + (1 - fill_start) * t / max(1.0, fill_end * (n_frames - 1))) * max_dist
        vessel = np.zeros((size, size), np.uint8)
        core = np.zeros((size, size), np.uint8)
        inst = instances[t]
        for branch in scene.branches:
            pts = px(move(branch.points))
            for i in np.flatnonzero(branch.dist[:-1] <= fill):
                p0, p1 = tuple(pts[i]), tuple(pts[i + 1])
                w = thick(float(branch.widths[i]))
                cv2.line(vessel, p0, p1, 1, w, cv2.LINE_8, 4)
                cv2.line(inst, p0, p1, branch.obj, w, cv2.LINE_8, 4)
                cv2.line(core, p0, p1, 1, max(1, w // 2), cv2.LINE_8, 4)
        contrast_cath = np.zeros((size, size), np.uint8)
        cv2.polylines(contrast_cath, [px(move(scene.contrast_catheter, cc_weight))], False, 1, cc_w, cv2.LINE_8, 4)
        cath = np.zeros((size, size), np.uint8)
        lumen = np.zeros((size, size), np.uint8)
        cath_pts = px(move(scene.catheter, cath_weight))
        cv2.polylines(cath, [cath_pts], False, 1, cath_w, cv2.LINE_8, 4)
        cv2.polylines(lumen, [cath_pts], False, 1, cath_lumen_w, cv2.LINE_8, 4)
        balloon_mask = np.zeros((size, size), np.uint8)
        markers = np.zeros((size, size), np.uint8)
        if scene.balloon is not None:
            a, b, width = scene.balloon
            a_px, b_px = move(a) * size, move(b) * size
            axis = b_px - a_px
            length = max(1.0, float(np.hypot(*axis)))
            # At least 7 px so it stays wider than any vessel at small sizes (4 px with thin devices).
            width_px = max(width * size * (0.6 if look.thin_devices else 1.0), 4.0 if look.thin_devices else 7.0)
            # A capsule (thick line with round caps) of the chord's length: the sausage shape of an inflated balloon.
            inset = axis / length * min(width_px / 2, length / 2 - 0.5)
            cv2.line(
                balloon_mask,
                tuple(np.round((a_px + inset) * shift_px).astype(int)),
                tuple(np.round((b_px - inset) * shift_px).astype(int)),
                1,
                int(round(width_px)),
                cv2.LINE_8,
                4,
            )
            for end in (0.2, 0.8):  # radio-opaque marker bands near both ends
                marker = a_px + axis * end
                cv2.circle(
                    markers,
                    tuple(np.round(marker * shift_px).astype(int)),
                    max(1, int(width_px / 3)) * shift_px,
                    1,
                    -1,
                    cv2.LINE_8,
                    4,
                )
            markers &= balloon_mask
        others_mask = np.zeros((size, size), np.uint8)
        if scene.others is not None:
            centre, radius = scene.others
            cv2.circle(
                others_mask,
                tuple(px(centre)),
                int(radius * size * shift_px),
                1,
                max(2, int(0.01 * size)),
                cv2.LINE_8,
                4,
            )

        label = labels[t]
        label[vessel > 0] = 1
        label[contrast_cath > 0] = 2
        label[cath > 0] = 3
        label[balloon_mask > 0] = 4
        label[others_mask > 0] = 5
        inst[balloon_mask > 0] = 0  # VOS objects are the contrast-filled vessel branches only
        inst[(contrast_cath > 0) | (cath > 0)] = 0

        atten = (
            # Diluted contrast in blood (vessels) is lighter than the undiluted contrast in the injecting
            # catheter and in the inflated balloon; the guiding catheter (no contrast) shows radio-opaque walls
            # around a lighter lumen.
            0.6 * vc * vessel
            + 0.4 * vc * core
            + 1.2 * dc * contrast_cath
            + 0.8 * dc * (cath - lumen)
            + 0.2 * dc * lumen
            + 1.4 * dc * balloon_mask
            + 0.8 * dc * markers
            + 0.8 * others_mask
        ).astype(np.float32)
        atten = cv2.GaussianBlur(atten, (0, 0), blur)
        heart_t = cv2.warpAffine(
            heart,
            np.array(
                [
                    [scale, 0, (1 - scale) * scene.heart_centre[0] * size + shift[0] * size],
                    [0, scale, (1 - scale) * scene.heart_centre[1] * size + shift[1] * size],
                ],
                np.float32,
            ),
            (size, size),
            borderMode=cv2.BORDER_REFLECT,
        )
        frames[t] = transmission * look.body * np.exp(-(atten + heart_t))

    # Signal-dependent quantum noise (Gaussian approximation of Poisson counts), then a small frame-to-frame
    # brightness flicker as from automatic exposure control.
    frames += np.sqrt(frames / dose) * rng.standard_normal(frames.shape, dtype=np.float32)
    frames *= (1.0 + 0.015 * rng.standard_normal(n_frames)).astype(np.float32)[:, None, None]
    if look.gamma != 1.0:
        frames = np.clip(frames, 0.0, 1.0) ** look.gamma
    video = np.clip(frames * 255.0, 0, 255).astype(np.uint8)
    return video, labels, instances


def render_angio_video(
    n_frames: int = 20, size: int = 128, seed: int = 0, balloon: bool = False, others: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic coronary angiography video and its exact label maps.

    Args:
        n_frames: number of frames T.
        size: frame side (square frames, as MOSXAV's 512x512).
        seed: everything (anatomy, catheters, motion, noise) is a function of the seed.
        balloon: add an angioplasty balloon on a vessel.
        others: add a small class-5 "others" object (as in MOSXAV test videos).

    Returns:
        (frames uint8 (T, H, W), labels uint8 (T, H, W) with ids 0-4, and 5 if ``others``).
    """
    frames, labels, _ = _render(n_frames, size, seed, balloon, others)
    return frames, labels


def _colour_mask(ids: np.ndarray) -> np.ndarray:
    return np.asarray(PALETTE, np.uint8)[ids]


def _write_mask(path: Path, ids: np.ndarray, encoding: str, palette: list[int]) -> None:
    from PIL import Image

    if encoding == "palette":
        img = Image.fromarray(ids, mode="P")
        img.putpalette(palette)
    elif encoding == "rgb":
        img = Image.fromarray(_colour_mask(ids), mode="RGB")
    else:  # "grey": ids as a grey image
        img = Image.fromarray(ids, mode="L")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _write_jpeg(path: Path, grey: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        # Three identical channels, like the dataset's JPEG frames (readers take the mean).
        if not cv2.imwrite(str(tmp), np.repeat(grey[..., None], 3, axis=2), [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"could not write {path}")


def _labels_json() -> dict:
    return {"categories": [{"id": i, "name": name, "color": list(PALETTE[i])} for i, name in enumerate(CLASS_NAMES)]}


def write_synthetic_mosxav(
    root: str | Path,
    n_trainval: int = 8,
    n_test: int = 3,
    n_frames: int = 20,
    size: int = 128,
    seed: int = 0,
    mask_encoding: Literal["palette", "rgb", "grey"] = "palette",
    difficulty: Literal["easy", "hard"] = "easy",
) -> Path:
    """Write a synthetic MOSXAV in the official layout.

    trainval videos ``v00..`` are annotated every 5th frame and split by the default 18/12 rule (written to
    ``ImageSets/train.txt`` and ``val.txt``); test videos are annotated on every frame, and every other test video
    holds a small class-5 object. Three videos in four (all but v01, v05, v09, ...) have a balloon.

    Args:
        root: output folder (created).
        n_trainval: trainval videos (at least 2 so that train and val are both non-empty).
        n_test: test videos.
        n_frames: frames per video.
        size: frame side in pixels.
        seed: seed of the whole dataset.
        mask_encoding: "palette" (index PNG with the class colours as palette), "rgb" (class colours) or "grey".
        difficulty: "easy" (the default; what the tests and the demo use) or "hard": every video gets its own
            appearance (vessel and device contrast, body thickness, detector gamma, dose i.e. noise, blur) and thin
            devices (1-2 px contrast catheter, 3 px guiding catheter, smaller balloons), and in most videos the
            guiding catheter's curl lies over the ostium, crossing the contrast catheter and the vessels. Meant
            for label-efficiency benchmarks (``benchmarks/angio_ssl.py``), where the easy set saturates.

    Returns:
        ``root``.
    """
    if n_trainval < 2 or n_test < 1:
        raise ValueError("need at least 2 trainval videos (train and val) and 1 test video")
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"unknown difficulty {difficulty!r}")
    if mask_encoding not in ("palette", "rgb", "grey"):
        raise ValueError(f"unknown mask_encoding {mask_encoding!r}")
    root = Path(root)
    palette = [c for rgb in PALETTE for c in rgb] + [0] * (3 * (256 - len(PALETTE)))
    vos_palette = [0, 0, 0] + [int(v) for v in np.random.default_rng(1).integers(64, 256, 3 * 255)]
    for split_index, (split_dir, count) in enumerate((("trainval", n_trainval), ("test", n_test))):
        base = root / split_dir
        every = ANNOTATION_EVERY[split_dir]
        first_mask: dict[str, dict] = {}
        names = [f"v{i:02d}" for i in range(count)]
        for i, name in enumerate(names):
            video_seed = int(np.random.SeedSequence([seed, split_index, i]).generate_state(1)[0])
            frames, labels, instances = _render(
                n_frames,
                size,
                video_seed,
                balloon=i % 4 != 1,
                others=split_dir == "test" and i % 2 == 0,
                look=_appearance(video_seed) if difficulty == "hard" else None,
            )
            appear: dict[str, list[int]] = {}
            seen: set[int] = set()
            for t in range(n_frames):
                stem = f"{t:05d}"
                _write_jpeg(base / "JPEGImages" / name / f"{stem}.jpg", frames[t])
                if t % every:
                    continue
                _write_mask(base / "Annotations_Semantic" / name / f"{stem}.png", labels[t], mask_encoding, palette)
                _write_mask(base / "Annotations" / name / f"{stem}.png", instances[t], "palette", vos_palette)
                new = sorted(set(np.unique(instances[t]).tolist()) - {0} - seen)
                if new:
                    appear[stem] = new
                    seen.update(new)
            first_mask[name] = {
                "frames": {k: {"objects": v} for k, v in appear.items()},
                "seen_objects": sorted(seen),
                "unseen_objects": [],
            }
        sets = base / "ImageSets"
        if split_dir == "trainval":
            val = [n for n in names if n in DEFAULT_VAL_VIDEOS] or names[-1:]
            train = [n for n in names if n not in val]
            write_text(sets / "train.txt", "".join(f"{n}\n" for n in train))
            write_text(sets / "val.txt", "".join(f"{n}\n" for n in val))
            write_json(sets / "val_first_mask.json", {"videos": {n: first_mask[n] for n in val}})
        else:
            write_text(sets / "test.txt", "".join(f"{n}\n" for n in names))
            write_json(sets / "test_first_mask.json", {"videos": first_mask})
        write_json(base / "labels.json", _labels_json())
    return root


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import cv2

    height, width = frames.shape[1:]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), isColor=True)
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write MP4 (mp4v) to {path}")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        finally:
            writer.release()


def write_synthetic_clinical_angio(
    out_dir: str | Path, seed: int = 0, n_frames: int = 16, size: int = 128, fps: float = 15.0
) -> Path:
    """Write clinical-format angiography inputs for ``medml predict angio``.

    Files: ``xa_cine.dcm`` (XA multi-frame DICOM cine with FrameTime), ``angio.mp4`` (mp4v), ``frames/NNNNN.png``
    (a folder of PNG frames), and ``corrupt_cine.dcm`` (the cine cut short inside its pixel data, which must
    become a row of ``failures.csv``, not a crash).

    Args:
        out_dir: output folder (created).
        seed: seed of the three rendered videos.
        n_frames: frames per video.
        size: frame side in pixels.
        fps: frame rate (FrameTime = 1000 / fps ms for the cine).

    Returns:
        ``out_dir``.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence([seed, 7]).generate_state(3)
    cine, _ = render_angio_video(n_frames, size, int(seeds[0]), balloon=True)
    cine_path = write_xa_cine(out_dir / "xa_cine.dcm", cine, frame_time_ms=1000.0 / fps)
    movie, _ = render_angio_video(n_frames, size, int(seeds[1]), balloon=False)
    _write_mp4(out_dir / "angio.mp4", movie, fps)
    folder, _ = render_angio_video(n_frames, size, int(seeds[2]), balloon=True)
    for t, frame in enumerate(folder):
        with atomic_path(out_dir / "frames" / f"{t:05d}.png") as tmp:
            from PIL import Image

            Image.fromarray(frame, mode="L").save(tmp, format="PNG")
    data = cine_path.read_bytes()
    with atomic_path(out_dir / "corrupt_cine.dcm") as tmp:
        tmp.write_bytes(data[: len(data) - cine[0].size * (n_frames // 2)])  # header intact, pixel data truncated
    return out_dir
