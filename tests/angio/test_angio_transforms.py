"""The angio frame preprocessing: MONAI-style transforms, the numbers of the former hand-written code, and one
composition shared by the training dataset and prediction."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from medml.data.mosxav import MOSXAV, AngioFrames, read_frame
from medml.transforms.angio import ToUnitGrey, ToUnitGreyd, frame_preprocessing, to_unit_grey


def test_to_unit_grey_array_and_dict_agree():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 9, 7), dtype=np.uint8)
    np.testing.assert_array_equal(ToUnitGrey()(u8), u8.astype(np.float32) / 255.0)
    u16 = rng.integers(100, 4000, (3, 9, 7)).astype(np.uint16)
    out = ToUnitGreyd("image")({"image": torch.from_numpy(u16.astype(np.int32)), "other": 1})
    assert out["other"] == 1 and out["image"].dtype == np.float32
    assert out["image"].min() == 0.0 and out["image"].max() == 1.0  # one scale for the whole video
    np.testing.assert_array_equal(out["image"], to_unit_grey(u16))


def test_preprocessing_reproduces_the_former_resize():
    """Images: torch bilinear (half-pixel centres, as prediction always did); labels: OpenCV's nearest."""
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (4, 40, 50), dtype=np.uint8)
    labels = rng.integers(0, 5, (4, 40, 50)).astype(np.int64)
    out = frame_preprocessing(64, native_key="frames")({"image": video, "label": labels})
    grey = video.astype(np.float32) / 255.0
    expected = F.interpolate(torch.from_numpy(grey)[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    assert isinstance(out["image"], np.ndarray) and out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"], expected[:, 0].numpy())
    np.testing.assert_array_equal(out["frames"], grey)  # the native copy is not resized
    assert out["label"].dtype == np.int64
    for t in range(len(labels)):
        former = cv2.resize(labels[t].astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(out["label"][t], former)
    same = frame_preprocessing(40)({"image": video[:, :, :40]})  # the model size itself: unchanged
    np.testing.assert_array_equal(same["image"], grey[:, :, :40])


def test_training_frames_and_prediction_see_the_same_input(synthetic_mosxav: Path):
    """A MOSXAV frame in the training dataset and the same frames as a clinical video reach the model alike."""
    items = MOSXAV(synthetic_mosxav).items("val", annotated_only=True)[:3]
    dataset = AngioFrames(items, size=96)
    video = np.stack([read_frame(i.image_path) for i in items])
    predicted = frame_preprocessing(96, native_key="frames")({"image": video})
    for k in range(len(items)):  # one frame or a video at once: the same up to float rounding of the kernels
        np.testing.assert_allclose(dataset[k]["image"][0].numpy(), predicted["image"][k], rtol=0, atol=1e-6)
    native = AngioFrames(items, size=None)
    np.testing.assert_array_equal(np.stack([native.load_arrays(k)["image"] for k in range(3)]), predicted["frames"])
