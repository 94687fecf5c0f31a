"""Videos (MP4, AVI, MOV, GIF, ...) and folders of numbered frames; overlay videos as MP4 (GIF fallback)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medml.errors import AbsurdSizeError, CorruptFileError
from medml.io.guard import check_memory, reading
from medml.io.image import Palette, overlay, read_image_file
from medml.io.types import Video
from medml.utils.files import atomic_path

MAX_VIDEO_FRAMES = 100000
# Frame folders carry no timing; MOSXAV-style angiography is acquired at 15 frames/s, the commonest XA rate.
DEFAULT_FRAME_FOLDER_FPS = 15.0


def _grey_if_equal_channels(frames: np.ndarray) -> np.ndarray:
    """X-ray videos are stored as RGB with three equal channels; return them as (T, H, W) then."""
    if frames.ndim == 4 and frames.shape[-1] == 3:
        if np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2]):
            return np.ascontiguousarray(frames[..., 0])
    return frames


def read_video_file(path: str | Path, *, keep_rgb: bool = False) -> Video:
    """Read all frames of a video file with OpenCV (GIF with Pillow) and its frame rate.

    Args:
        path: the file.
        keep_rgb: return (T, H, W, 3) even when the three channels are equal.
    """
    path = Path(path)
    with reading(path, "video"):
        return _read_video_file(path, keep_rgb)


def _read_video_file(path: Path, keep_rgb: bool) -> Video:
    with open(path, "rb") as fh:
        is_gif = fh.read(4) == b"GIF8"
    if is_gif:
        return _read_gif(path, keep_rgb)
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise CorruptFileError("cannot open video (unsupported codec or damaged file)", path)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps):
            fps = 0.0
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        # Frames are kept in a list and then stacked: twice the decoded size at the peak.
        frame_bytes = 2 * max(width, 1) * max(height, 1) * 3
        if declared > 0:
            check_memory(declared * frame_bytes, f"a video of {declared} frames of {width}x{height} RGB", path)
        frames, times, total = [], [], 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            total += 2 * frame.nbytes  # the container's frame count may lie: count what is decoded
            check_memory(total, f"a video of more than {len(frames)} frames of {frame.shape[1]}x{frame.shape[0]}", path)
            times.append(float(capture.get(cv2.CAP_PROP_POS_MSEC)))
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if len(frames) > MAX_VIDEO_FRAMES:
                raise AbsurdSizeError(f"more than {MAX_VIDEO_FRAMES} frames", path)
    finally:
        capture.release()
    if not frames:
        raise CorruptFileError("video has no decodable frames", path)
    stack = np.stack(frames)
    if fps <= 0:
        fps = DEFAULT_FRAME_FOLDER_FPS
    frame_times = np.arange(len(frames)) * 1000.0 / fps
    stack = stack if keep_rgb else _grey_if_equal_channels(stack)
    return Video(stack, frame_times, fps, {"source": str(path), "n_frames": len(frames)})


def _read_gif(path: Path, keep_rgb: bool) -> Video:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            n = int(getattr(img, "n_frames", 1) or 1)
            check_memory(2 * n * img.size[0] * img.size[1] * 3, f"a GIF of {n} frames of {img.size}", path)
            durations, frames = [], []
            for frame in ImageSequence.Iterator(img):
                durations.append(float(frame.info.get("duration", 100) or 100))
                frames.append(np.asarray(frame.convert("RGB")))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CorruptFileError(f"cannot read GIF ({exc})", path) from None
    if not frames:
        raise CorruptFileError("GIF has no frames", path)
    durations = [d if math.isfinite(d) and d > 0 else 100.0 for d in durations]
    stack = np.stack(frames)
    times = np.concatenate([[0.0], np.cumsum(durations[:-1])])
    fps = 1000.0 / float(np.mean(durations))
    stack = stack if keep_rgb else _grey_if_equal_channels(stack)
    return Video(stack, times, fps, {"source": str(path), "n_frames": len(frames)})


def read_frame_folder(paths: Sequence[str | Path], fps: float | None = None, *, keep_rgb: bool = False) -> Video:
    """Stack numbered frame images (``00000.jpg``, ``00001.jpg``, ...) into a `Video`.

    Args:
        paths: the frame files in order.
        fps: frame rate (frame folders store none; default 15, recorded as assumed in ``meta``).
        keep_rgb: keep three equal channels instead of returning grey frames.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise CorruptFileError("no frames", None)
    first = read_image_file(paths[0], rgb=True).array
    check_memory(
        2 * len(paths) * first.nbytes, f"{len(paths)} frames of {first.shape[1]}x{first.shape[0]}", paths[0].parent
    )
    frames = [first] + [read_image_file(p, rgb=True).array for p in paths[1:]]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise CorruptFileError(f"frames of different sizes {sorted(shapes)}", paths[0].parent)
    stack = np.stack(frames)
    stack = stack if keep_rgb else _grey_if_equal_channels(stack)
    rate = float(fps) if fps else DEFAULT_FRAME_FOLDER_FPS
    meta = {
        "source": str(paths[0].parent),
        "n_frames": len(paths),
        "fps_assumed": fps is None,
        "frame_files": [p.name for p in paths],
    }
    return Video(stack, np.arange(len(paths)) * 1000.0 / rate, rate, meta)


def write_overlay_video(
    frames: np.ndarray,
    masks: np.ndarray,
    palette: Palette | None,
    path: str | Path,
    fps: float = 15.0,
    alpha: float = 0.5,
) -> Path:
    """Write frames with their label masks blended in, as MP4 (H.264 through imageio-ffmpeg) or GIF.

    A ``.gif`` path writes a GIF; otherwise MP4 is tried and, if no ffmpeg is available, a GIF is written next to
    the requested path instead. Returns the path actually written. GIF (Pillow) merges identical consecutive
    frames into one frame shown for their summed duration, so a GIF may hold fewer frames than ``frames``; the
    playing time is the same.

    Args:
        frames: (T, H, W) or (T, H, W, 3).
        masks: (T, H, W) integer labels.
        palette: label colours (None: VOC/DAVIS palette).
        path: ``.mp4`` or ``.gif``.
        fps: playback rate (the source's frame rate, so the overlay plays in real time).
    """
    frames, masks = np.asarray(frames), np.asarray(masks)
    if len(frames) != len(masks):
        raise ValueError(f"{len(frames)} frames but {len(masks)} masks")
    blended = np.stack([overlay(f, m, palette, alpha) for f, m in zip(frames, masks, strict=True)])
    path = Path(path)
    if path.suffix.lower() != ".gif":
        try:
            return _write_mp4(blended, path, fps)
        except (ImportError, RuntimeError, OSError):
            path = path.with_suffix(".gif")
    return _write_gif(blended, path, fps)


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> Path:
    import imageio.v2 as imageio

    # H.264 with yuv420p (what browsers and PACS viewers play) needs even sides: pad by one pixel if odd.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            str(tmp),
            format="FFMPEG",
            fps=float(fps),
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", "18"],
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        if os.path.getsize(tmp) == 0:
            raise RuntimeError("ffmpeg wrote an empty file")
    return path


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> Path:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000.0 / fps), loop=0)
    return path
