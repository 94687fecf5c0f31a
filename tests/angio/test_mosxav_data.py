"""MOSXAV adapter and synthetic generator: layout, errors, mask encodings, labelled pools, class 5, rendering."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from medml.data.mosxav import (
    CLASS_NAMES,
    DEFAULT_TRAIN_VIDEOS,
    DEFAULT_VAL_VIDEOS,
    IGNORE_INDEX,
    MOSXAV,
    OTHERS,
    PALETTE,
    AngioFrames,
    check_mosxav_layout,
    read_frame,
    read_mask,
)
from medml.data.synthetic_mosxav import render_angio_video, write_synthetic_clinical_angio, write_synthetic_mosxav
from medml.errors import ConfigError, DataLayoutError
from medml.pipelines.angio.data import labelled_pools

TRAIN = ["v00", "v02", "v03", "v05", "v06"]  # the default rule applied to v00..v07
VAL = ["v01", "v04", "v07"]


@pytest.fixture
def layout_copy(synthetic_mosxav: Path, tmp_path: Path) -> Path:
    """A private copy of the session dataset, for tests that break the layout."""
    return Path(shutil.copytree(synthetic_mosxav, tmp_path / "MOSXAV"))


# ----- the generator writes a valid official layout ---------------------------------------------------------------
def test_generated_layout_passes_check_and_has_official_structure(synthetic_mosxav: Path) -> None:
    check_mosxav_layout(synthetic_mosxav)
    data = MOSXAV(synthetic_mosxav)
    assert data.videos("train") == TRAIN
    assert data.videos("val") == VAL
    assert data.videos("test") == ["v00", "v01", "v02"]
    trainval = synthetic_mosxav / "trainval"
    frames = data.frames("train", "v00")
    assert [f.name for f in frames] == [f"{t:05d}.jpg" for t in range(20)]
    annotated = sorted(p.name for p in (trainval / "Annotations_Semantic" / "v00").iterdir())
    assert annotated == ["00000.png", "00005.png", "00010.png", "00015.png"]  # every 5th frame
    assert len(list((synthetic_mosxav / "test" / "Annotations_Semantic" / "v01").glob("*.png"))) == 20  # every frame
    assert len(list((trainval / "Annotations" / "v00").glob("*.png"))) == 4  # VOS instance masks beside them
    assert (trainval / "ImageSets" / "train.txt").read_text().split() == TRAIN
    assert (trainval / "ImageSets" / "val_first_mask.json").is_file()
    assert (synthetic_mosxav / "test" / "ImageSets" / "test_first_mask.json").is_file()
    assert Image.open(trainval / "Annotations_Semantic" / "v00" / "00000.png").mode == "P"
    summary = data.split_summary()
    assert summary["train"]["frames"] == 100 and summary["train"]["annotated_frames"] == 20
    assert summary["test"]["annotated_frames"] == 60
    assert summary["split_source"].startswith("ImageSets")


def test_generated_classes_trainval_0_to_4_and_others_only_in_test(synthetic_mosxav: Path) -> None:
    data = MOSXAV(synthetic_mosxav)
    train_ids = set().union(*(np.unique(read_mask(i.mask_path)).tolist() for i in data.items("train", True)))
    test_ids = set().union(*(np.unique(read_mask(i.mask_path)).tolist() for i in data.items("test", True)))
    assert train_ids == {0, 1, 2, 3, 4}
    assert OTHERS in test_ids and test_ids <= set(range(6))


def test_default_split_used_without_imagesets(layout_copy: Path) -> None:
    shutil.rmtree(layout_copy / "trainval" / "ImageSets")
    shutil.rmtree(layout_copy / "test" / "ImageSets")
    check_mosxav_layout(layout_copy)
    data = MOSXAV(layout_copy)
    assert data.videos("train") == [v for v in DEFAULT_TRAIN_VIDEOS if v in TRAIN] == TRAIN
    assert data.videos("val") == [v for v in DEFAULT_VAL_VIDEOS if v in VAL] == VAL
    assert data.videos("test") == ["v00", "v01", "v02"]
    assert "default" in data.split_summary()["split_source"]
    assert len(DEFAULT_TRAIN_VIDEOS) == 18 and len(DEFAULT_VAL_VIDEOS) == 12
    assert not set(DEFAULT_TRAIN_VIDEOS) & set(DEFAULT_VAL_VIDEOS)


# ----- each layout error gives its documented message -------------------------------------------------------------
def _expect_layout_error(root: Path, fragment: str, path_end: str) -> DataLayoutError:
    with pytest.raises(DataLayoutError) as info:
        check_mosxav_layout(root)
    assert fragment in info.value.reason, info.value.reason
    assert info.value.path is not None and info.value.path.replace("\\", "/").endswith(path_end), info.value.path
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("split_dir", ["trainval", "test"])
def test_missing_split_folder(layout_copy: Path, split_dir: str) -> None:
    shutil.rmtree(layout_copy / split_dir)
    _expect_layout_error(layout_copy, f"missing {split_dir}/", split_dir)


def test_video_frames_outside_jpegimages(layout_copy: Path) -> None:
    images = layout_copy / "trainval" / "JPEGImages"
    for video in images.iterdir():
        shutil.move(str(video), layout_copy / "trainval" / video.name)
    images.rmdir()
    _expect_layout_error(layout_copy, "no JPEGImages/ folder", "trainval/JPEGImages")


def test_missing_semantic_annotations(layout_copy: Path) -> None:
    shutil.rmtree(layout_copy / "test" / "Annotations_Semantic")
    _expect_layout_error(layout_copy, "no Annotations_Semantic/ folder", "test/Annotations_Semantic")


def test_video_folder_without_jpeg_frames(layout_copy: Path) -> None:
    for frame in (layout_copy / "trainval" / "JPEGImages" / "v04").iterdir():
        frame.rename(frame.with_suffix(".bmp"))
    _expect_layout_error(layout_copy, "holds no .jpg frames", "JPEGImages/v04")


def test_masks_of_a_video_without_frames(layout_copy: Path) -> None:
    shutil.rmtree(layout_copy / "trainval" / "JPEGImages" / "v03")
    _expect_layout_error(layout_copy, "no JPEGImages/v03/ frames", "Annotations_Semantic/v03")


def test_mask_without_frame(layout_copy: Path) -> None:
    (layout_copy / "test" / "JPEGImages" / "v01" / "00007.jpg").unlink()
    _expect_layout_error(layout_copy, "mask has no frame", "test/Annotations_Semantic/v01/00007.png")


def test_mask_size_differs_from_frame(layout_copy: Path) -> None:
    mask_path = layout_copy / "trainval" / "Annotations_Semantic" / "v02" / "00005.png"
    small = Image.open(mask_path).resize((64, 64), Image.NEAREST)
    small.save(mask_path)
    _expect_layout_error(layout_copy, "mask size 64x64 differs from frame size 128x128", "v02/00005.png")


def test_unknown_rgb_colour_in_mask(layout_copy: Path) -> None:
    mask_path = layout_copy / "trainval" / "Annotations_Semantic" / "v05" / "00010.png"
    rgb = np.asarray(PALETTE, np.uint8)[read_mask(mask_path)]
    rgb[3, 4] = (12, 34, 56)  # a colour outside the class table, e.g. from JPEG compression
    Image.fromarray(rgb, mode="RGB").save(mask_path)
    error = _expect_layout_error(layout_copy, "(12, 34, 56)", "v05/00010.png")
    assert "class table" in error.reason


def test_train_list_without_val_list(layout_copy: Path) -> None:
    (layout_copy / "trainval" / "ImageSets" / "val.txt").unlink()
    _expect_layout_error(layout_copy, "train.txt / val.txt but not the other", "ImageSets/val.txt")


def test_imagesets_names_a_missing_video(layout_copy: Path) -> None:
    (layout_copy / "trainval" / "ImageSets" / "val.txt").write_text("v01\nv04\nv29\n")
    _expect_layout_error(layout_copy, "'v29'", "ImageSets/val.txt")


def test_imagesets_video_in_train_and_val(layout_copy: Path) -> None:
    (layout_copy / "trainval" / "ImageSets" / "val.txt").write_text("v01\nv04\nv07\nv02\n")
    _expect_layout_error(layout_copy, "'v02' is in both", "ImageSets/val.txt")


def test_missing_dataset_folder(tmp_path: Path) -> None:
    _expect_layout_error(tmp_path / "nowhere", "not found", "nowhere")


# ----- mask encodings ---------------------------------------------------------------------------------------------
def test_palette_rgb_and_grey_masks_read_to_the_same_ids(tmp_path: Path) -> None:
    kwargs = dict(n_trainval=2, n_test=1, n_frames=6, size=64, seed=3)
    roots = {
        enc: write_synthetic_mosxav(tmp_path / enc, mask_encoding=enc, **kwargs) for enc in ("palette", "rgb", "grey")
    }
    rel = Path("test/Annotations_Semantic/v00")
    names = sorted(p.name for p in (roots["palette"] / rel).iterdir())
    assert len(names) == 6
    assert Image.open(roots["rgb"] / rel / names[0]).mode == "RGB"
    for name in names:
        ids = read_mask(roots["palette"] / rel / name)
        np.testing.assert_array_equal(read_mask(roots["rgb"] / rel / name), ids)
        np.testing.assert_array_equal(read_mask(roots["grey"] / rel / name), ids)
    stacked = np.stack([read_mask(roots["palette"] / rel / n) for n in names])
    assert {1, 2, 3, 4, 5} <= set(np.unique(stacked).tolist())  # every class exercised the colour mapping
    check_mosxav_layout(roots["rgb"])


def test_read_mask_rejects_ids_outside_the_table(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    Image.fromarray(np.full((8, 8), 9, np.uint8), mode="L").save(path)
    with pytest.raises(DataLayoutError, match="label id 9"):
        read_mask(path)
    path.write_bytes(b"not a png")
    with pytest.raises(DataLayoutError, match="unreadable mask"):
        read_mask(path)


# ----- labelled and unlabelled pools ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fraction", "expected"), [(0.125, 3), (0.25, 5), (0.5, 10), (1.0, 20)])
def test_labelled_fraction_by_frames(synthetic_mosxav: Path, fraction: float, expected: int) -> None:
    data = MOSXAV(synthetic_mosxav)
    labelled, unlabelled = labelled_pools(data, fraction, by="frames", seed=0)
    assert len(labelled) == expected  # of 5 train videos x 4 annotated frames, rounded half up
    assert all(item.mask_path is not None and item.mask_path.is_file() for item in labelled)
    assert all(item.frame_index % 5 == 0 for item in labelled)
    _check_pools(data, labelled, unlabelled)


@pytest.mark.parametrize(("fraction", "videos"), [(0.25, 1), (0.5, 3), (1.0, 5)])
def test_labelled_fraction_by_videos(synthetic_mosxav: Path, fraction: float, videos: int) -> None:
    data = MOSXAV(synthetic_mosxav)
    labelled, unlabelled = labelled_pools(data, fraction, by="videos", seed=1)
    chosen = {item.video for item in labelled}
    assert len(chosen) == videos
    assert len(labelled) == 4 * videos  # every annotated frame of a drawn video
    assert not {item.video for item in unlabelled if item.frame_index % 5 == 0} & chosen
    _check_pools(data, labelled, unlabelled)


def _check_pools(data: MOSXAV, labelled: list, unlabelled: list) -> None:
    train, held_out = set(data.videos("train")), set(data.videos("val"))
    for item in labelled + unlabelled:
        assert item.split == "train" and item.video in train and item.video not in held_out
        assert "test" not in item.image_path.parts and item.image_path.parent.name in train
    labelled_paths = {item.image_path for item in labelled}
    unlabelled_paths = {item.image_path for item in unlabelled}
    assert not labelled_paths & unlabelled_paths  # no labelled frame is reused as unlabelled
    assert all(item.mask_path is None for item in unlabelled)  # annotated-but-not-drawn frames lose their masks
    every_train_frame = {f for v in train for f in data.frames("train", v)}
    assert labelled_paths | unlabelled_paths == every_train_frame


def test_labelled_pools_deterministic_in_seed(synthetic_mosxav: Path) -> None:
    data = MOSXAV(synthetic_mosxav)
    first = [i.image_path for i in labelled_pools(data, 0.25, seed=5)[0]]
    assert first == [i.image_path for i in labelled_pools(MOSXAV(synthetic_mosxav), 0.25, seed=5)[0]]
    others = {tuple(i.image_path for i in labelled_pools(data, 0.25, seed=s)[0]) for s in range(6, 10)}
    assert len(others | {tuple(first)}) > 1  # the seed changes the draw


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_labelled_fraction_out_of_range(synthetic_mosxav: Path, fraction: float) -> None:
    with pytest.raises(ConfigError, match="labelled_fraction"):
        labelled_pools(MOSXAV(synthetic_mosxav), fraction)


# ----- the torch dataset ------------------------------------------------------------------------------------------
def test_angio_frames_tensors_resize_and_grey(synthetic_mosxav: Path) -> None:
    data = MOSXAV(synthetic_mosxav)
    labelled, unlabelled = labelled_pools(data, 0.25)
    dataset = AngioFrames(labelled + unlabelled[:2], size=64)
    sample = dataset[0]
    assert sample["image"].shape == (1, 64, 64) and str(sample["image"].dtype) == "torch.float32"
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["label"].shape == (64, 64) and str(sample["label"].dtype) == "torch.int64"
    assert sample["video"] == labelled[0].video and sample["frame"] == labelled[0].frame_index
    assert set(np.unique(sample["label"].numpy()).tolist()) <= set(range(5))
    assert "label" not in dataset[len(labelled)]  # unlabelled items carry no label
    native = AngioFrames(labelled[:1], size=None)[0]
    colour = cv2.imread(str(labelled[0].image_path), cv2.IMREAD_COLOR).astype(np.float32)
    np.testing.assert_allclose(native["image"][0].numpy() * 255, np.round(colour.mean(axis=2)), atol=0.51)
    np.testing.assert_array_equal(native["label"].numpy(), read_mask(labelled[0].mask_path))


def test_class_5_ignored_or_mapped_to_background(synthetic_mosxav: Path) -> None:
    items = [
        i
        for i in MOSXAV(synthetic_mosxav).items("test", annotated_only=True)
        if (read_mask(i.mask_path) == OTHERS).any()
    ][:2]
    assert items, "the synthetic test videos must hold class-5 pixels"
    for item, ignored, background in zip(
        items,
        AngioFrames(items, size=None, others="ignore"),
        AngioFrames(items, size=None, others="background"),
        strict=True,
    ):
        raw = read_mask(item.mask_path)
        assert (ignored["label"].numpy() == IGNORE_INDEX).sum() == (raw == OTHERS).sum() > 0
        assert (background["label"].numpy() == OTHERS).sum() == 0
        np.testing.assert_array_equal(background["label"].numpy(), np.where(raw == OTHERS, 0, raw))
    with pytest.raises(ConfigError):
        AngioFrames(items, others="keep")  # type: ignore[arg-type]


def test_unreadable_frame_is_a_medml_error(tmp_path: Path) -> None:
    from medml.errors import CorruptFileError

    path = tmp_path / "00000.jpg"
    path.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CorruptFileError, match="unreadable frame"):
        read_frame(path)


# ----- the renderer -----------------------------------------------------------------------------------------------
def test_render_looks_like_angiography_and_is_deterministic() -> None:
    frames, labels = render_angio_video(n_frames=20, size=128, seed=11, balloon=True)
    assert frames.shape == labels.shape == (20, 128, 128) and frames.dtype == labels.dtype == np.uint8
    again, again_labels = render_angio_video(n_frames=20, size=128, seed=11, balloon=True)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}
    # Contrast attenuates X-rays: every foreground class is darker than the background.
    background = frames[labels == 0].mean()
    for class_id in (1, 2, 3, 4):
        assert frames[labels == class_id].mean() < background - 25, CLASS_NAMES[class_id]
    # The vessel tree fills with contrast over time while the catheters are there from the start.
    vessel_area = (labels == 1).sum(axis=(1, 2))
    assert vessel_area[-1] > 2 * vessel_area[0] and vessel_area[0] > 0
    assert (labels[0] == 2).sum() > 0 and (labels[0] == 3).sum() > 0
    # The guiding catheter is the thicker tube: larger inscribed radius than the contrast catheter.
    radius = {c: cv2.distanceTransform((labels[-1] == c).astype(np.uint8), cv2.DIST_L2, 3).max() for c in (2, 3)}
    assert radius[3] > radius[2]
    # Cardiac motion: the vessel mask moves between frames even after it has filled.
    assert (labels[-1] == 1).sum() != ((labels[-1] == 1) & (labels[-4] == 1)).sum()
    no_balloon = render_angio_video(n_frames=4, size=64, seed=11, balloon=False)[1]
    assert (no_balloon == 4).sum() == 0


def test_clinical_inputs_for_predict(tmp_path: Path) -> None:
    import pydicom

    from medml import io
    from medml.errors import CorruptFileError

    out = write_synthetic_clinical_angio(tmp_path / "clinical", seed=0, n_frames=8, size=64)
    cine = pydicom.dcmread(out / "xa_cine.dcm")
    assert cine.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and int(cine.NumberOfFrames) == 8
    assert cine.PhotometricInterpretation == "MONOCHROME2" and int(cine.BitsAllocated) == 8
    assert float(cine.FrameTime) == pytest.approx(1000 / 15, abs=0.1)
    cases, failures = io.discover(out)
    kinds = {case.path.name: case.kind for case in cases}
    assert (
        kinds
        == {
            "xa_cine.dcm": "dicom_multiframe",
            "angio.mp4": "video",
            "frames": "frames",
            "corrupt_cine.dcm": "dicom_multiframe",
        }
        and not failures
    )
    for case in cases:
        if case.path.name == "corrupt_cine.dcm":
            with pytest.raises(CorruptFileError):
                io.read_video(case)
            continue
        video = io.read_video(case)
        assert video.frames.shape[:3] == (8, 64, 64), case.path.name
        assert video.fps == pytest.approx(15.0, rel=0.01)
    np.testing.assert_array_equal(read_frame(out / "frames" / "00003.png"), io.read_video(out / "frames").frames[3])
    # The cine holds the rendered angiogram: dark structures on a brighter background.
    frames = cine.pixel_array
    assert np.percentile(frames, 2) < np.median(frames) - 40


def test_hard_synthetic_option_shifts_appearance_and_thins_devices(tmp_path: Path):
    from medml.data.synthetic_mosxav import _appearance, _render

    easy_means, hard_means, easy_cc, hard_cc = [], [], 0, 0
    for seed in range(4):
        frames, labels, _ = _render(2, 128, seed, balloon=True, others=False)
        hard, hard_labels, _ = _render(2, 128, seed, balloon=True, others=False, look=_appearance(seed))
        easy_means.append(frames.mean())
        hard_means.append(hard.mean())
        easy_cc += int((labels == 2).sum())
        hard_cc += int((hard_labels == 2).sum())
    assert np.std(hard_means) > 2 * np.std(easy_means)  # per-video appearance shift
    assert hard_cc < 0.8 * easy_cc  # thinner contrast catheter
    root = write_synthetic_mosxav(tmp_path / "hard", n_trainval=2, n_test=1, n_frames=2, size=64, difficulty="hard")
    check_mosxav_layout(root)
    with pytest.raises(ValueError, match="difficulty"):
        write_synthetic_mosxav(tmp_path / "bad", difficulty="medium")  # type: ignore[arg-type]
