"""2D images, cines, video files and frame folders, and the PNG/video writers."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from medml.io import (
    default_palette,
    discover,
    read_image,
    read_video,
    write_overlay_png,
    write_overlay_video,
    write_palette_png,
)
from medml.io.synthetic import write_xa_cine


def test_xa_cine_frames_and_times(xa_cine):
    path, frames = xa_cine
    video = read_video(path)
    np.testing.assert_array_equal(video.frames, frames)
    np.testing.assert_allclose(video.frame_times_ms, np.arange(len(frames)) * 66.7)
    assert video.fps == pytest.approx(1000 / 66.7)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert video.meta["SOPInstanceUID"] == ds.SOPInstanceUID
    assert video.meta["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert video.meta["StudyInstanceUID"] == ds.StudyInstanceUID


def test_frame_time_vector(tmp_path):
    frames = np.zeros((4, 8, 8), np.uint8)
    video = read_video(write_xa_cine(tmp_path / "v.dcm", frames, [0, 30, 40, 50]))
    np.testing.assert_allclose(video.frame_times_ms, [0, 30, 70, 120])  # cumulative increments; the first is 0


def test_ultrasound_ybr_cine_is_rgb():
    from pydicom.data import get_testdata_file

    video = read_video(get_testdata_file("examples_ybr_color.dcm"))
    assert video.frames.shape[0] == 30 and video.frames.shape[-1] == 3
    assert video.frames.dtype == np.uint8 and video.fps > 0


def test_png_kinds(tmp_path):
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 2:5] = 2
    mask[4, :] = 5
    write_palette_png(mask, {2: (255, 0, 0), 5: (0, 0, 255)}, tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[6:9] == [255, 0, 0]
    np.testing.assert_array_equal(read_image(tmp_path / "mask.png").array, mask)  # indices, not colours

    deep = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = read_image(tmp_path / "deep.png").array
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, deep)

    rgba = np.random.default_rng(0).integers(0, 255, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png").array, rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png", rgb=True).array, rgba[..., :3])


def test_overlay_png_colours_only_labelled_pixels(tmp_path):
    image = np.full((4, 4), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1
    write_overlay_png(image, mask, [(0, 0, 0), (255, 0, 0)], tmp_path / "o.png", alpha=0.5)
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert tuple(out[0, 0]) == (178, 50, 50)
    assert tuple(out[3, 3]) == (100, 100, 100)


def test_frames_folder_and_overlay_videos(tmp_path):
    rng = np.random.default_rng(1)
    frames = (rng.random((5, 32, 40)) * 255).astype(np.uint8)
    folder = tmp_path / "JPEGImages" / "v03"
    folder.mkdir(parents=True)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{k:05d}.png")
    cases, _ = discover(tmp_path / "JPEGImages")
    assert [c.kind for c in cases] == ["frames"]
    video = read_video(cases[0], fps=12.5)
    np.testing.assert_array_equal(video.frames, frames)
    np.testing.assert_allclose(video.frame_times_ms, np.arange(5) * 80.0)

    masks = np.zeros(frames.shape, np.uint8)
    masks[:, 10:20, 5:30] = 1
    mp4 = write_overlay_video(frames, masks, default_palette(), tmp_path / "overlay.mp4", fps=12.5)
    back = read_video(mp4)
    assert back.frames.shape[:3] == (5, 32, 40)
    assert back.fps == pytest.approx(12.5, rel=0.01)
    # the labelled band is tinted red, the rest stays grey
    assert back.frames.ndim == 4 and back.frames[2, 15, 15, 0] > back.frames[2, 15, 15, 2] + 40
    gif = write_overlay_video(frames, masks, None, tmp_path / "overlay.gif", fps=10)
    assert read_video(gif).frames.shape[0] == 5


def test_voi_window_on_request(tmp_path):
    from medml.io.synthetic import write_ct_series

    hu_values = np.linspace(-1000, 1000, 16 * 16).reshape(1, 16, 16)
    path = write_ct_series(tmp_path, shape=(1, 16, 16), hu=hu_values)[0]  # stores window 40/400
    hu = read_image(path).array.astype(float)
    np.testing.assert_allclose(hu, np.round(hu_values[0]))
    shown = read_image(path, voi=True).array.astype(float)
    inside = (hu > -150) & (hu < 230)
    # below the window everything is the darkest value, above it the brightest, and the ramp is monotonic
    assert np.ptp(shown[hu < -170]) == 0 and np.ptp(shown[hu > 250]) == 0
    assert shown[hu < -170].max() < shown[inside].min() and shown[inside].max() < shown[hu > 250].min()
    order = np.argsort(hu.ravel(), kind="stable")
    assert np.all(np.diff(shown.ravel()[order]) >= -1e-6)


def test_overlay_video_falls_back_to_gif_without_ffmpeg(tmp_path, monkeypatch):
    import medml.io.video as video_module

    def no_ffmpeg(*args, **kwargs):
        raise RuntimeError("no ffmpeg here")

    monkeypatch.setattr(video_module, "_write_mp4", no_ffmpeg)
    frames = np.stack([np.full((8, 8), 60 * k, np.uint8) for k in range(3)])
    written = write_overlay_video(frames, np.ones((3, 8, 8), np.uint8), None, tmp_path / "o.mp4", fps=5)
    assert written.suffix == ".gif" and written.is_file() and not (tmp_path / "o.mp4").exists()
    back = read_video(written)
    assert back.frames.shape[0] == 3
    np.testing.assert_allclose(back.frame_times_ms, [0, 200, 400])
    # GIF merges identical consecutive frames into one longer frame; the playing time is kept
    still = write_overlay_video(
        np.zeros((3, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8), None, tmp_path / "still.gif", fps=5
    )
    merged = read_video(still)
    assert merged.frames.shape[0] * 1000 / merged.fps == 600
