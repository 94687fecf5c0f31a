"""The REFUGE / REFUGE2 adapter: released layouts, mask conversion, tables with moving columns, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medml.data.refuge import (
    REFUGE,
    camera_for_size,
    check_refuge_layout,
    parse_table,
    read_mask,
    to_challenge_mask,
    write_challenge_mask,
)
from medml.errors import DataLayoutError
from medml.metrics.refuge import vcdr


def test_mask_conversion_both_ways(tmp_path: Path):
    bmp = np.array([[255, 128, 0], [254, 1, 255]], np.uint8)
    path = tmp_path / "m.bmp"
    Image.fromarray(bmp, mode="L").save(path)
    labels = read_mask(path)
    # official thresholds: cup == 0, disc < 255 (so 254 and 1 are rim)
    assert labels.tolist() == [[0, 1, 2], [1, 1, 0]]
    assert to_challenge_mask(labels).tolist() == [[255, 128, 0], [128, 128, 255]]
    out = write_challenge_mask(labels, tmp_path / "out.bmp")
    with Image.open(out) as img:
        assert img.mode == "L" and img.format == "BMP"
        assert np.array_equal(np.asarray(img), to_challenge_mask(labels))
    Image.fromarray(np.stack([bmp] * 3, -1)).save(tmp_path / "rgb.bmp")  # RGB masks: channel 0
    assert np.array_equal(read_mask(tmp_path / "rgb.bmp"), labels)


def test_synthetic_layout_is_read(small_refuge: Path):
    refuge = check_refuge_layout(small_refuge)
    assert refuge.splits == ["train", "val", "test"]
    train = refuge.items("train")
    assert len(train) == 6 and all(i.mask_path is not None and i.fovea is not None for i in train)
    for item in train:  # labels from Glaucoma/Non-Glaucoma folders, and the cup follows the label
        assert item.label == (1 if item.name.startswith("g") else 0)
        ratio = vcdr(read_mask(item.mask_path))
        assert (ratio > 0.55) if item.label else (ratio < 0.55)
    val = refuge.items("val")
    assert [i.name for i in val] == ["V0001", "V0002", "V0003", "V0004"]
    assert all(i.label in (0, 1) and i.fovea is not None for i in val)  # label and fovea from the 5-column XLSX
    summary = refuge.split_summary()
    assert summary["test"]["cameras"] == {"224x224": 2, "256x248": 2}


def test_tables_by_header_and_by_official_position(tmp_path: Path):
    pytest.importorskip("openpyxl")  # pandas reads and writes XLSX through it
    pd.DataFrame({"ID": [1], "ImgName": ["g0001.jpg"], "Fovea_X": [10.5], "Fovea_Y": [20.0]}).to_excel(
        tmp_path / "train.xlsx", index=False
    )
    assert parse_table(tmp_path / "train.xlsx") == {"g0001": {"fovea": (10.5, 20.0)}}
    # test-time GT: x, y in columns 4-5, label in column 3
    pd.DataFrame(
        {"ID": [1], "ImgName": ["T0001.jpg"], "Glaucoma Label": [1], "Fovea_X": [1.0], "Fovea_Y": [2.0]}
    ).to_excel(tmp_path / "test.xlsx", index=False)
    assert parse_table(tmp_path / "test.xlsx") == {"T0001": {"label": 1, "fovea": (1.0, 2.0)}}
    # unrecognised headers: the official positions (2 columns = name, label; the mask's .bmp name maps to the stem)
    pd.DataFrame({"a": ["V0001.bmp", "V0002.bmp"], "b": [0, 1]}).to_csv(tmp_path / "gt.csv", index=False)
    assert parse_table(tmp_path / "gt.csv") == {"V0001": {"label": 0}, "V0002": {"label": 1}}
    pd.DataFrame({"Image Name": ["a.jpg"], "Label(Glaucoma=1)": [1]}).to_csv(tmp_path / "loose.csv", index=False)
    assert parse_table(tmp_path / "loose.csv") == {"a": {"label": 1}}
    pd.DataFrame({"a": [1], "b": ["n1.jpg"], "c": [5.0], "d": [6.0]}).to_csv(tmp_path / "pos4.csv", index=False)
    assert parse_table(tmp_path / "pos4.csv") == {"n1": {"fovea": (5.0, 6.0)}}
    pd.DataFrame({"ImgName": ["x.jpg"], "Fovea_X": ["oops"], "Fovea_Y": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataLayoutError, match=r"row 2 \(x\)"):
        parse_table(tmp_path / "bad.csv")


def test_refuge2_style_layout(tmp_path: Path, small_refuge: Path):
    """A layout the generator did not write: split folders under a wrapper, masks beside a CSV of labels."""
    root = tmp_path / "data"
    src = REFUGE(small_refuge).items("val")
    rows = []
    for item in src:
        (root / "REFUGE2" / "Train" / "Images").mkdir(parents=True, exist_ok=True)
        (root / "REFUGE2" / "Train-GT" / "Masks").mkdir(parents=True, exist_ok=True)
        shutil.copy(item.image_path, root / "REFUGE2" / "Train" / "Images" / f"{item.name}.jpg")
        shutil.copy(item.mask_path, root / "REFUGE2" / "Train-GT" / "Masks" / f"{item.name}.bmp")
        rows.append({"FileName": f"{item.name}.jpg", "Glaucoma Label": item.label})
    pd.DataFrame(rows).to_csv(root / "REFUGE2" / "Train-GT" / "labels.csv", index=False)
    refuge = check_refuge_layout(root)
    items = refuge.items("train")
    assert [i.label for i in items] == [i.label for i in src]
    assert all(i.mask_path is not None and i.fovea is None for i in items)


def test_errors_name_the_file(tmp_path: Path, small_refuge: Path):
    with pytest.raises(DataLayoutError, match="no split folders"):
        REFUGE(tmp_path)
    root = tmp_path / "copy"
    shutil.copytree(small_refuge, root)
    victim = next((root / "Annotation-Training400" / "Disc_Cup_Masks" / "Glaucoma").glob("*.bmp"))
    victim.unlink()
    with pytest.raises(DataLayoutError, match=victim.stem) as err:
        check_refuge_layout(root)
    assert str(err.value).startswith(str(root / "Training400" / "Glaucoma" / f"{victim.stem}.jpg"))


def test_known_cameras():
    assert camera_for_size(2124, 2056) == "Zeiss Visucam 500"
    assert camera_for_size(1634, 1634) == "Canon CR-2"
    assert camera_for_size(2056, 2124) == "Zeiss Visucam 500"
    assert camera_for_size(800, 600) == "800x600"
