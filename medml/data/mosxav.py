"""MOSXAV (Multi-Object Segmentation in X-ray Angiography Videos) in its official layout.

Provenance: the layout, class table and split facts come from the dataset's landing page (``xilin-x/MOSXAV``
README, project page xilin-x.github.io/MOSXAV) and the companion loaders of ``xilin-x/XRAVOS``; see
``datasets/mosxav.md``. This module is written from that description, not from their code.

Layout (per split root ``trainval/`` and ``test/``)::

    JPEGImages/vXX/NNNNN.jpg            frames (grey X-ray stored as JPEG)
    Annotations_Semantic/vXX/NNNNN.png  semantic masks: palette/grey index PNG, or RGB in the class colours
    Annotations/vXX/NNNNN.png           VOS instance masks (not used by the semantic pipeline)
    ImageSets/train.txt, val.txt        trainval only: one video id per line
    ImageSets/test.txt                  test only
    labels.json                         category metadata

trainval frames are annotated every 5th frame, test frames every frame. Class 5 ("others") occurs only in test;
medml trains on ids 0-4 and, by default, ignores class-5 pixels when scoring (``others="ignore"``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from medml.errors import ConfigError, CorruptFileError, DataLayoutError
from medml.transforms.angio import frame_preprocessing

CLASS_NAMES = ("background", "vessel", "contrast_catheter", "catheter", "balloon", "others")
# RGB preview colours of the official class table (spec §A6), indexed by label id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (85, 170, 255),
    (170, 255, 0),
    (249, 193, 0),
    (255, 0, 0),
    (244, 108, 59),
)
TRAIN_CLASSES = 5  # ids 0-4 are learned; "others" (5) appears in test only
OTHERS = 5
IGNORE_INDEX = 255

# The 18 training videos listed in xilin-x/XRAVOS util/xray_subset.txt; the other 12 of the 30 trainval videos are
# the validation videos. Used only when trainval/ImageSets/train.txt and val.txt are absent.
DEFAULT_TRAIN_VIDEOS = (
    "v00",
    "v02",
    "v03",
    "v05",
    "v06",
    "v09",
    "v10",
    "v12",
    "v14",
    "v17",
    "v20",
    "v22",
    "v23",
    "v24",
    "v25",
    "v26",
    "v27",
    "v29",
)
DEFAULT_VAL_VIDEOS = ("v01", "v04", "v07", "v08", "v11", "v13", "v15", "v16", "v18", "v19", "v21", "v28")

SPLIT_DIRS = {"train": "trainval", "val": "trainval", "test": "test"}
FRAME_SUFFIXES = (".jpg", ".jpeg")
ANNOTATION_EVERY = {"trainval": 5, "test": 1}  # the official annotation stride, for the dataset card and generator

Split = Literal["train", "val", "test"]


def _palette_lut() -> dict[int, int]:
    """Packed 24-bit RGB -> label id."""
    return {(r << 16) | (g << 8) | b: idx for idx, (r, g, b) in enumerate(PALETTE)}


def read_mask(path: str | Path) -> np.ndarray:
    """Read one semantic mask as label ids.

    Palette ("P") and grey PNGs hold the ids directly (the palette itself is ignored). Three-channel masks are
    mapped through `PALETTE`, except when all channels are equal and hold valid ids (ids stored as grey RGB).

    Args:
        path: the PNG file.

    Returns:
        ``uint8`` array (H, W) of ids 0-5.

    Raises:
        DataLayoutError: unreadable file, an id outside the class table, or a colour not in `PALETTE`.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                ids = np.asarray(img)
            elif mode == "1":
                ids = np.asarray(img).astype(np.uint8)
            else:
                rgb = np.asarray(img.convert("RGB"))
                ids = None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataLayoutError(f"unreadable mask ({type(exc).__name__}: {exc})", path) from None

    if ids is None:
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() and rgb[..., 0].max() <= OTHERS:
            ids = rgb[..., 0]
        else:
            packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
            colours, inverse = np.unique(packed, return_inverse=True)
            lut = _palette_lut()
            unknown = [c for c in colours.tolist() if c not in lut]
            if unknown:
                c = unknown[0]
                raise DataLayoutError(
                    f"mask colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) is not in the MOSXAV class table "
                    f"({len(unknown)} unknown colour(s); JPEG-compressed or resized masks are not usable)",
                    path,
                )
            ids = np.asarray([lut[c] for c in colours.tolist()], dtype=np.uint8)[inverse.reshape(packed.shape)]
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise DataLayoutError(f"mask has shape {ids.shape}, expected a 2-D label image", path)
    top = int(ids.max()) if ids.size else 0
    if top > OTHERS:
        raise DataLayoutError(f"mask holds label id {top}, the MOSXAV class table has ids 0-{OTHERS}", path)
    return ids.astype(np.uint8, copy=False)


def read_frame(path: str | Path) -> np.ndarray:
    """Read one frame as a grey ``uint8`` image (H, W): the mean of the colour channels, as in the dataset's JPEGs."""
    import cv2

    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CorruptFileError("unreadable frame image", path)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).round().astype(np.uint8) if img.dtype.kind == "f" else img
    return np.ascontiguousarray(img)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataLayoutError(f"unreadable image ({type(exc).__name__})", path) from None
    return height, width


def _frame_files(video_dir: Path) -> list[Path]:
    return sorted(p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)


def _read_video_list(path: Path) -> list[str]:
    """Video ids of an ImageSets list: one per line; a path-like entry keeps its video folder name."""
    ids: list[str] = []
    for line in path.read_text().splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if not token or token.startswith("#"):
            continue
        parts = [p for p in token.replace("\\", "/").split("/") if p]
        name = parts[-2] if len(parts) > 1 and "." in parts[-1] else parts[-1]
        if name not in ids:
            ids.append(name)
    return ids


@dataclass(frozen=True)
class FrameItem:
    """One frame of one video; ``mask_path`` is None when the frame is (used as) unlabelled."""

    split: str
    video: str
    frame_index: int
    image_path: Path
    mask_path: Path | None = None


class MOSXAV:
    """Index of a MOSXAV folder: videos per split, frames per video, and their semantic masks.

    Args:
        root: the folder holding ``trainval/`` and ``test/``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataLayoutError("MOSXAV folder not found", self.root)
        self._frames: dict[Path, list[Path]] = {}

    def split_root(self, split: str) -> Path:
        if split not in SPLIT_DIRS:
            raise ConfigError(f"unknown MOSXAV split {split!r}; expected one of {sorted(SPLIT_DIRS)}")
        return self.root / SPLIT_DIRS[split]

    def _present_videos(self, split_dir: str) -> list[str]:
        images = self.root / split_dir / "JPEGImages"
        if not images.is_dir():
            raise DataLayoutError(f"no JPEGImages/ folder (frames go in {split_dir}/JPEGImages/vXX/NNNNN.jpg)", images)
        return sorted(p.name for p in images.iterdir() if p.is_dir())

    @functools.cached_property
    def _trainval_split(self) -> tuple[tuple[str, ...], tuple[str, ...], str]:
        present = self._present_videos("trainval")
        sets = self.root / "trainval" / "ImageSets"
        train_txt, val_txt = sets / "train.txt", sets / "val.txt"
        if train_txt.is_file() or val_txt.is_file():
            if not (train_txt.is_file() and val_txt.is_file()):
                missing = val_txt if train_txt.is_file() else train_txt
                raise DataLayoutError("ImageSets has one of train.txt / val.txt but not the other", missing)
            train, val = _read_video_list(train_txt), _read_video_list(val_txt)
            for name, listed, path in (("train", train, train_txt), ("val", val, val_txt)):
                if not listed:
                    raise DataLayoutError(f"the {name} list is empty", path)
                absent = [v for v in listed if v not in present]
                if absent:
                    raise DataLayoutError(
                        f"lists video {absent[0]!r} which has no JPEGImages/{absent[0]}/ folder", path
                    )
            both = sorted(set(train) & set(val))
            if both:
                raise DataLayoutError(f"video {both[0]!r} is in both train.txt and val.txt", val_txt)
            return tuple(sorted(train)), tuple(sorted(val)), "ImageSets/train.txt + val.txt"
        # No split files: the published 18/12 split; videos outside the 30 published names go to training.
        val = tuple(v for v in present if v in DEFAULT_VAL_VIDEOS)
        train = tuple(v for v in present if v not in DEFAULT_VAL_VIDEOS)
        return train, val, "default 18/12 split (XRAVOS util/xray_subset.txt)"

    @functools.cached_property
    def _test_videos(self) -> tuple[str, ...]:
        present = self._present_videos("test")
        test_txt = self.root / "test" / "ImageSets" / "test.txt"
        if test_txt.is_file():
            listed = _read_video_list(test_txt)
            if not listed:
                raise DataLayoutError("the test list is empty", test_txt)
            absent = [v for v in listed if v not in present]
            if absent:
                raise DataLayoutError(
                    f"lists video {absent[0]!r} which has no JPEGImages/{absent[0]}/ folder", test_txt
                )
            return tuple(sorted(listed))
        return tuple(present)

    def videos(self, split: Split) -> list[str]:
        """Sorted video ids of ``split`` ("train", "val" or "test")."""
        self.split_root(split)
        if split == "test":
            return list(self._test_videos)
        train, val, _ = self._trainval_split
        return list(train if split == "train" else val)

    def frames(self, split: Split, video: str) -> list[Path]:
        """JPEG frames of one video, in frame order."""
        video_dir = self.split_root(split) / "JPEGImages" / video
        if video_dir not in self._frames:
            if not video_dir.is_dir():
                raise DataLayoutError("video folder not found", video_dir)
            self._frames[video_dir] = _frame_files(video_dir)
        return list(self._frames[video_dir])

    def mask_path(self, split: Split, video: str, frame_path: str | Path) -> Path | None:
        """The semantic mask of a frame, or None if that frame is not annotated."""
        path = self.split_root(split) / "Annotations_Semantic" / video / f"{Path(frame_path).stem}.png"
        return path if path.is_file() else None

    def items(self, split: Split, annotated_only: bool = False) -> list[FrameItem]:
        """Every frame of every video of ``split`` (or only the annotated ones) as `FrameItem`s with their masks."""
        out: list[FrameItem] = []
        for video in self.videos(split):
            for index, frame in enumerate(self.frames(split, video)):
                mask = self.mask_path(split, video, frame)
                if mask is not None or not annotated_only:
                    out.append(FrameItem(split, video, _frame_index(frame, index), frame, mask))
        return out

    def split_summary(self) -> dict[str, Any]:
        """Video ids, frame and annotated-frame counts per split, and where the train/val split came from."""
        _, _, source = self._trainval_split
        summary: dict[str, Any] = {"root": str(self.root), "split_source": source}
        for split in ("train", "val", "test"):
            vids = self.videos(split)  # type: ignore[arg-type]
            frames = [f for v in vids for f in self.frames(split, v)]  # type: ignore[arg-type]
            annotated = sum(
                self.mask_path(split, v, f) is not None  # type: ignore[arg-type]
                for v in vids
                for f in self.frames(split, v)
            )  # type: ignore[arg-type]
            summary[split] = {"videos": vids, "frames": len(frames), "annotated_frames": annotated}
        return summary


def _frame_index(frame: Path, position: int) -> int:
    """The frame number from an ``NNNNN`` file name; the position in the folder for other names."""
    return int(frame.stem) if frame.stem.isdigit() else position


def check_mosxav_layout(root: str | Path, check_masks: bool = True) -> None:
    """Check a MOSXAV folder; raise `DataLayoutError` naming the first problem.

    Checks: ``trainval/`` and ``test/`` exist; each has ``JPEGImages/`` with one folder of JPEG frames per video
    and ``Annotations_Semantic/``; every mask has a frame of the same size; ImageSets lists are consistent;
    training videos have annotated frames; with ``check_masks``, every mask decodes to known classes.

    Args:
        root: the dataset folder.
        check_masks: also decode every mask (about a second for the full dataset).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError("MOSXAV folder not found", root)
    for split_dir in ("trainval", "test"):
        if not (root / split_dir).is_dir():
            raise DataLayoutError(
                f"missing {split_dir}/ folder (expected {split_dir}/JPEGImages/vXX/NNNNN.jpg)", root / split_dir
            )
    for split_dir in ("trainval", "test"):
        base = root / split_dir
        images = base / "JPEGImages"
        if not images.is_dir():
            loose = [
                p
                for p in base.iterdir()
                if p.is_dir() and p.name not in ("Annotations", "Annotations_Semantic", "ImageSets")
            ]
            hint = f" (found {loose[0].name}/; move video folders under JPEGImages/)" if loose else ""
            raise DataLayoutError(f"no JPEGImages/ folder{hint}", images)
        semantic = base / "Annotations_Semantic"
        if not semantic.is_dir():
            raise DataLayoutError("no Annotations_Semantic/ folder (semantic masks vXX/NNNNN.png)", semantic)
        videos = sorted(p for p in images.iterdir() if p.is_dir())
        if not videos:
            raise DataLayoutError("no video folders in JPEGImages/", images)
        for video in videos:
            frames = _frame_files(video)
            if not frames:
                raise DataLayoutError("video folder holds no .jpg frames", video)
        for mask_dir in sorted(p for p in semantic.iterdir() if p.is_dir()):
            frame_dir = images / mask_dir.name
            if not frame_dir.is_dir():
                raise DataLayoutError(
                    f"masks for video {mask_dir.name} but no JPEGImages/{mask_dir.name}/ frames", mask_dir
                )
            frames_by_stem = {f.stem: f for f in _frame_files(frame_dir)}
            for mask in sorted(mask_dir.glob("*.png")):
                frame = frames_by_stem.get(mask.stem)
                if frame is None:
                    raise DataLayoutError(f"mask has no frame JPEGImages/{mask_dir.name}/{mask.stem}.jpg", mask)
                if check_masks:
                    ids = read_mask(mask)
                    frame_hw = _image_size(frame)
                    if ids.shape != frame_hw:
                        raise DataLayoutError(
                            f"mask size {ids.shape[1]}x{ids.shape[0]} differs from frame size "
                            f"{frame_hw[1]}x{frame_hw[0]} ({frame.name})",
                            mask,
                        )
                else:
                    mask_hw, frame_hw = _image_size(mask), _image_size(frame)
                    if mask_hw != frame_hw:
                        raise DataLayoutError(
                            f"mask size {mask_hw[1]}x{mask_hw[0]} differs from frame size "
                            f"{frame_hw[1]}x{frame_hw[0]} ({frame.name})",
                            mask,
                        )
    data = MOSXAV(root)
    train, val, test = data.videos("train"), data.videos("val"), data.videos("test")  # ImageSets errors surface here
    if not train:
        raise DataLayoutError("no training videos (write trainval/ImageSets/train.txt and val.txt)", root / "trainval")
    if not val:
        raise DataLayoutError(
            "no validation videos: the default split names v01, v04, ...; write "
            "trainval/ImageSets/train.txt and val.txt for other video names",
            root / "trainval",
        )
    if not test:
        raise DataLayoutError("no test videos", root / "test")
    if not any(data.mask_path("train", v, f) for v in train for f in data.frames("train", v)):
        raise DataLayoutError("no annotated frames in the training videos", root / "trainval" / "Annotations_Semantic")


class AngioFrames(Dataset):
    """Frames (and masks) of MOSXAV items as tensors.

    Args:
        items: `FrameItem`s, e.g. from `MOSXAV.items` (or the angio pipeline's labelled/unlabelled pools).
        size: output side in pixels (int) or (H, W); ``None`` keeps the native size. Images and masks go through
            `medml.transforms.angio.frame_preprocessing` (bilinear images, nearest masks), as prediction's frames do.
        others: what class 5 becomes in the label: ``"ignore"`` (`IGNORE_INDEX`) or ``"background"`` (0).
        transform: optional callable on ``{"image": float32 (H, W) in [0, 1], "label": int64 (H, W)}`` (label
            only when present), applied after resizing and before conversion to tensors (e.g. albumentations).

    Each item is ``{"image": float32 (1, H, W) in [0, 1], "label": int64 (H, W) (annotated items only),
    "video": str, "frame": int}``.
    """

    def __init__(
        self,
        items: Sequence[FrameItem],
        size: int | tuple[int, int] | None = 512,
        others: Literal["ignore", "background"] = "ignore",
        transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    ):
        if others not in ("ignore", "background"):
            raise ConfigError(f"data.others must be 'ignore' or 'background', got {others!r}")
        self.items = list(items)
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        self.others_value = IGNORE_INDEX if others == "ignore" else 0
        self.transform = transform
        self.preprocess = frame_preprocessing(self.size)

    def __len__(self) -> int:
        return len(self.items)

    def read_arrays(self, index: int) -> dict[str, np.ndarray]:
        """The item as read: ``{"image": uint8 (H, W), "label": int64 (H, W)}`` (label only when annotated), class 5
        mapped."""
        item = self.items[index]
        sample: dict[str, np.ndarray] = {"image": read_frame(item.image_path)}
        if item.mask_path is not None:
            label = read_mask(item.mask_path)
            if label.shape != sample["image"].shape:
                raise DataLayoutError(
                    f"mask size {label.shape} differs from frame size {sample['image'].shape}", item.mask_path
                )
            label = label.astype(np.int64)
            label[label == OTHERS] = self.others_value
            sample["label"] = label
        return sample

    def load_arrays(self, index: int) -> dict[str, Any]:
        """The item preprocessed (`frame_preprocessing`: grey in [0, 1], resized), before ``transform``."""
        sample = self.preprocess({key: value[None] for key, value in self.read_arrays(index).items()})
        return {key: value[0] for key, value in sample.items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item = self.items[index]
        sample = self.load_arrays(index)
        if self.transform is not None:
            sample = self.transform(sample)
        out: dict[str, Any] = {
            "image": torch.as_tensor(np.ascontiguousarray(sample["image"]), dtype=torch.float32)[None],
            "video": item.video,
            "frame": item.frame_index,
        }
        if "label" in sample:
            out["label"] = torch.as_tensor(np.ascontiguousarray(sample["label"]), dtype=torch.int64)
        return out
