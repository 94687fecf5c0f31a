"""DENTEX adapter: the release's layout and JSON flavours, name-mapped labels, duplicates, splits, errors, and
panoramics read display-correct from PNG/JPEG/DICOM."""

import json
import shutil
import warnings

import numpy as np
import pytest

from medml.data.dentex import (
    DIAGNOSES,
    dentex_splits,
    fdi_code,
    fdi_indices,
    find_cross_tier_duplicates,
    load_dentex,
    load_dentex_tier,
    prepare_dentex,
    read_panoramic,
    split_dentex,
)
from medml.data.synthetic_dentex import CLINICAL_FILES, write_clinical_panoramics, write_synthetic_dentex
from medml.errors import DataLayoutError


@pytest.fixture(scope="module")
def dentex(tmp_path_factory):
    root = tmp_path_factory.mktemp("dentex") / "DENTEX"
    return write_synthetic_dentex(root, n_per_tier=(6, 6, 10), n_validation=5, size=(128, 256), seed=3)


@pytest.fixture
def copy(dentex, tmp_path):
    return shutil.copytree(dentex, tmp_path / "DENTEX")


def test_fdi_codes():
    assert fdi_code(0, 0) == 11 and fdi_code(1, 5) == 26 and fdi_code(3, 7) == 48
    assert fdi_indices(36) == (2, 5)
    with pytest.raises(ValueError):
        fdi_code(4, 0)


def test_tiers_levels_and_labels(dentex):
    data = load_dentex(dentex)
    assert list(data) == ["quadrant", "enumeration", "disease", "validation"]
    assert [len(data[t]) for t in data] == [6, 6, 10, 5]
    levels = {t: data[t][0].levels for t in data}
    assert levels["quadrant"] == ("quadrant",)
    assert levels["enumeration"] == ("quadrant", "enumeration")
    assert levels["disease"] == levels["validation"] == ("quadrant", "enumeration", "diagnosis")
    q = np.concatenate([im.labels for im in data["quadrant"]])
    assert (q[:, 0] >= 0).all() and (q[:, 1:] == -1).all()
    e = np.concatenate([im.labels for im in data["enumeration"]])
    assert (e[:, :2] >= 0).all() and (e[:, 2] == -1).all()
    d = np.concatenate([im.labels for im in data["disease"]])
    assert (d >= 0).all() and d[:, 2].max() < len(DIAGNOSES)
    item = data["enumeration"][0]
    assert item.boxes.dtype == np.float32 and item.labels.dtype == np.int64 and item.boxes.shape[1] == 4
    assert (item.boxes[:, 2] > item.boxes[:, 0]).all() and (item.boxes[:, 3] > item.boxes[:, 1]).all()
    assert item.level_mask == (True, True, False)
    assert set(item.fdi_codes()) <= {10 * q + t for q in range(1, 5) for t in range(1, 9)}
    assert not any(".ipynb_checkpoints" in str(im.image_path) for im in data["validation"])


def test_quadrants_mapped_by_name_not_id(dentex):
    """The quadrant tier's id 0 means quadrant "2": after mapping, quadrant 1 lies left of quadrant 2 on screen
    (patient's right on the viewer's left) and above quadrant 4, quadrant 3 right of 4 and below 2, in every tier."""
    raw = json.loads((dentex / "training_data/quadrant/train_quadrant.json").read_text())
    assert {c["id"]: c["name"] for c in raw["categories"]}[0] == "2"
    data = load_dentex(dentex)
    for tier in ("quadrant", "enumeration"):
        for im in data[tier]:
            cx = (im.boxes[:, 0] + im.boxes[:, 2]) / 2
            cy = (im.boxes[:, 1] + im.boxes[:, 3]) / 2
            q = im.labels[:, 0]
            assert cx[q == 0].max() < cx[q == 1].min() and cx[q == 3].max() < cx[q == 2].min()
            assert cy[q == 0].max() < cy[q == 3].min() and cy[q == 1].max() < cy[q == 2].min()


def test_cross_tier_duplicates_found_and_excluded(dentex):
    data = load_dentex(dentex)
    groups = find_cross_tier_duplicates(data)
    assert sorted(g["tiers"] for g in groups) == [
        ["enumeration", "validation"],
        ["quadrant", "disease"],
        ["quadrant", "enumeration", "disease"],
    ]
    by_pixels = find_cross_tier_duplicates(data, by="pixels")
    assert sorted(g["tiers"] for g in by_pixels) == sorted(g["tiers"] for g in groups)
    kept = load_dentex(dentex, exclude_duplicates=True)
    assert [len(kept[t]) for t in kept] == [4, 4, 10, 5]  # copies leave the pre-training tiers only
    _, summary = prepare_dentex(dentex)
    assert summary["duplicates"]["groups"] == 3
    json.dumps(summary)  # JSON-able for `medml prepare`
    assert summary["tiers"]["disease"]["images"] == 10
    assert summary["splits"]["disease"]["test"]["images"] == 5  # the validation tier as external test


def test_splits_are_deterministic_and_disjoint(dentex):
    images = load_dentex_tier(dentex, "disease")
    a = dentex_splits(images, 0.2, 0.2, seed=1)
    b = dentex_splits(list(reversed(images)), 0.2, 0.2, seed=1)
    assert [sorted(i.case_id for i in a[s]) for s in a] == [sorted(i.case_id for i in b[s]) for s in b]
    assert [len(a[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    ids = [i.case_id for s in a.values() for i in s]
    assert len(ids) == len(set(ids)) == 10
    assert dentex_splits(images, 0.2, 0.2, seed=2) != a
    splits = split_dentex(load_dentex(dentex), val_fraction=0.2, external_test=False, test_fraction=0.2)
    assert len(splits["disease"]["test"]) == 2 and splits["quadrant"]["test"] == []


def test_duplicate_boxes_with_different_diagnoses_kept_and_authors_flavour(copy):
    """The authors' converted files: all three categories_K in other orders and null ids for absent levels."""
    path = copy / "validation_triple.json"
    doc = json.loads(path.read_text())
    image = doc["images"][0]
    doc["categories_2"] = [{"id": i, "name": n} for i, n in enumerate(["6", "7", "8", "5", "4", "1", "3", "2"])]
    doc["categories_3"] = [
        {"id": i, "name": n} for i, n in enumerate(["Caries", "Deep Caries", "Impacted", "Periapical Lesion"])
    ]
    box = [10, 20, 30, 40]
    doc["annotations"] = [
        {"id": 1, "image_id": image["id"], "bbox": box, "category_id_1": 2, "category_id_2": 0, "category_id_3": 1},
        {"id": 2, "image_id": image["id"], "bbox": box, "category_id_1": 2, "category_id_2": 0, "category_id_3": 3},
        {
            "id": 3,
            "image_id": image["id"],
            "bbox": box,
            "category_id_1": 1,
            "category_id_2": None,
            "category_id_3": None,
        },
    ]
    path.write_text(json.dumps(doc))
    item = load_dentex_tier(copy, "validation")[0]
    np.testing.assert_array_equal(item.boxes[:2], [[10, 20, 40, 60], [10, 20, 40, 60]])
    # quadrant id 2 = "3"; tooth id 0 = "6"; diagnoses "Deep Caries" and "Periapical Lesion"
    assert item.labels.tolist() == [[2, 5, 3], [2, 5, 2], [1, -1, -1]]
    assert item.fdi_codes().tolist() == [36, 36, 0]


def test_missing_image_names_the_file(copy):
    (copy / "training_data/quadrant_enumeration/xrays/train_2.png").unlink()
    with pytest.raises(DataLayoutError, match=r"train_quadrant_enumeration\.json: image train_2\.png"):
        load_dentex(copy)


def test_bad_json_names_the_file(copy):
    path = copy / "training_data/quadrant-enumeration-disease/train_quadrant_enumeration_disease.json"
    path.write_text(path.read_text()[:-10])
    with pytest.raises(DataLayoutError, match="train_quadrant_enumeration_disease.json: not valid JSON") as err:
        load_dentex_tier(copy, "disease")
    assert "\n" not in str(err.value)


def test_unknown_category_and_unknown_id(copy):
    path = copy / "training_data/quadrant/train_quadrant.json"
    doc = json.loads(path.read_text())
    doc["categories"][1]["name"] = "Quadrant five"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataLayoutError, match=r"train_quadrant\.json: unknown quadrant category name 'Quadrant five'"):
        load_dentex_tier(copy, "quadrant")
    doc["categories"][1]["name"] = "1"
    doc["annotations"][0]["category_id"] = 9
    path.write_text(json.dumps(doc))
    with pytest.raises(DataLayoutError, match="category_id = 9 is not a category id"):
        load_dentex_tier(copy, "quadrant")


def test_size_mismatch_and_missing_layout(copy, tmp_path):
    (tmp_path / "empty").mkdir()
    path = copy / "training_data/quadrant/train_quadrant.json"
    doc = json.loads(path.read_text())
    doc["images"][0]["width"] += 10
    path.write_text(json.dumps(doc))
    load_dentex_tier(copy, "quadrant")  # sizes are only read when asked
    with pytest.raises(DataLayoutError, match="train_0.png: image is"):
        load_dentex_tier(copy, "quadrant", check_sizes=True)
    with pytest.raises(DataLayoutError, match="no DENTEX annotation files"):
        load_dentex(tmp_path / "empty")


@pytest.fixture(scope="module")
def clinical(tmp_path_factory):
    return write_clinical_panoramics(tmp_path_factory.mktemp("clinical") / "panoramics", size=(96, 192), truth=True)


@pytest.mark.parametrize("name", sorted(CLINICAL_FILES))
def test_clinical_panoramics_read_display_correct(clinical, name):
    """Whatever the encoding (MONOCHROME1, window, VOI LUT sequence, 8/12/16 bit), bright means dense."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. pydicom's "VOI LUT on a float input array"
        image, meta = read_panoramic(clinical / name)
    truth = np.load(clinical.parent / f"panoramics_truth_{name.rsplit('.', 1)[0]}.npy")
    assert image.shape == truth.shape and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert np.corrcoef(image.ravel(), truth.ravel())[0, 1] > 0.99
    if name.endswith(".dcm"):
        assert meta["Modality"] in ("DX", "PX", "IO")


def test_palette_and_rgba_pngs_read_as_grey(tmp_path):
    from PIL import Image

    grey = (np.arange(48 * 96).reshape(48, 96) % 251).astype(np.uint8)
    Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "p.png")
    Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)).save(tmp_path / "rgba.png")
    for name in ("p.png", "rgba.png"):
        image, _ = read_panoramic(tmp_path / name)
        assert image.shape == grey.shape
        np.testing.assert_allclose(image, grey / 255.0, atol=2 / 255)
