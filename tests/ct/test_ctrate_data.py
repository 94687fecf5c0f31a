"""CT-RATE adapter: metadata rescale and spacing over the header, layout errors naming the file, patient folds,
a memory-mapped cache outside the dataset folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medml.data import ctrate
from medml.data.synthetic_ctrate import synthesize_ctrate
from medml.errors import DataLayoutError
from medml.transforms.ct import ct_preprocess


@pytest.fixture(scope="module")
def small_ctrate(tmp_path_factory) -> Path:
    return synthesize_ctrate(tmp_path_factory.mktemp("ctrate") / "CT-RATE", 12, 6, shape=(12, 48, 48), seed=3)


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open() as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write(path: Path, header, rows) -> None:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


def test_split_volumes_labels_and_metadata(small_ctrate):
    train, valid = ctrate.read_split(small_ctrate, "train"), ctrate.read_split(small_ctrate, "valid")
    assert {v.patient for v in train}.isdisjoint({v.patient for v in valid})
    assert all(len(v.labels) == 18 for v in train) and len(ctrate.LABELS) == 18
    assert all(v.path.is_file() and v.path.parent.name == v.scan for v in train + valid)
    assert ctrate.parse_name("valid_53_a_1.nii.gz") == ("valid", "valid_53", "valid_53_a", "1")


def test_hu_and_spacing_come_from_the_metadata_csv(small_ctrate):
    volumes = ctrate.read_split(small_ctrate, "train")
    intercepts = {v.intercept for v in volumes}
    assert len(intercepts) == 2  # the generator stores some reconstructions with another intercept
    for item in volumes[:6]:
        header = nib.load(str(item.path)).header
        assert np.allclose(header.get_zooms()[:3], 1.0)  # the header lies, as in the release
        vol = ctrate.load_volume(item)
        assert vol.spacing == item.spacing and item.spacing[0] > 5.0
        assert abs(np.median(vol.array[:, :2, :]) + 1000) < 80  # air outside the body, whatever the intercept


def test_layout_errors_name_the_file(small_ctrate, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_ctrate, bad)
    root = bad / "dataset"
    meta = root / "metadata" / "train_metadata.csv"
    header, rows = _rows(meta)
    _write(meta, header, [[*r[:4], "[0.7; 0.7]", *r[5:]] if i == 0 else r for i, r in enumerate(rows)])
    with pytest.raises(DataLayoutError, match="XYSpacing") as err:
        ctrate.check_layout(bad)
    assert "train_metadata.csv" in str(err.value) and "\n" not in str(err.value)
    _write(meta, [h if h != "ZSpacing" else "Zspacing" for h in header], rows)
    with pytest.raises(DataLayoutError, match="missing column 'ZSpacing'"):
        ctrate.check_layout(bad)
    _write(meta, header, rows)
    missing = ctrate.read_split(bad, "train")[0].path
    missing.unlink()
    with pytest.raises(DataLayoutError, match="missing") as err:
        ctrate.check_layout(bad)
    assert str(missing) in str(err.value)
    shutil.rmtree(root / "multi_abnormality_labels")
    with pytest.raises(DataLayoutError, match="valid_predicted_labels.csv|train_predicted_labels.csv"):
        ctrate.check_layout(bad)


def test_patient_folds_keep_scans_and_reconstructions_together(small_ctrate):
    volumes = ctrate.read_split(small_ctrate, "train")
    seen = {}
    for fold in range(5):
        train, val = ctrate.split_train_val(volumes, 5, fold, seed=0)
        assert {v.patient for v in train}.isdisjoint({v.patient for v in val})
        assert len(train) + len(val) == len(volumes)
        for v in val:
            seen.setdefault(v.patient, set()).add(fold)
    assert all(len(f) == 1 for f in seen.values()) and len(seen) == len({v.patient for v in volumes})
    # A patient's fold does not depend on which other patients exist.
    assert ctrate.patient_fold("train_7", 5, 0) == ctrate.patient_fold("train_7", 5, 0)


def test_cache_is_float16_memory_mapped_and_outside_the_dataset(small_ctrate, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    volumes = ctrate.read_split(small_ctrate, "valid")
    prep = {"size": [12, 16, 16]}
    transform = ct_preprocess(spacing=(20.0, 15.0, 15.0), size=(12, 16, 16))
    folder = ctrate.build_cache(small_ctrate, volumes, transform, prep)
    assert small_ctrate.resolve() not in folder.resolve().parents
    cached = folder / ctrate.cache_name(volumes[0])
    arr = np.load(cached, mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.dtype == np.float16 and arr.shape == (12, 16, 16)
    mtime = cached.stat().st_mtime_ns
    ctrate.build_cache(small_ctrate, volumes, transform, prep)  # built once: nothing is redone
    assert cached.stat().st_mtime_ns == mtime
    item = ctrate.CtRateDataset(volumes, folder)[0]
    assert item["image"].shape == (12, 16, 16) and item["label"].shape == (18,)
    # A volume replaced under the same name gets a new cache entry, never the stale one.
    img = nib.load(str(volumes[0].path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), str(volumes[0].path))
    fresh = ctrate.read_split(small_ctrate, "valid")[0]
    assert ctrate.cache_name(fresh) != cached.name


def test_radchestct_mapping_has_the_16_shared_labels():
    from medml.data.radchestct import SHARED_LABELS, ctrate_targets

    assert len(SHARED_LABELS) == 16 and "Mosaic attenuation pattern" not in SHARED_LABELS
    t = ctrate_targets({"nodulegr1cm*right_lung": 1, "cardiomegaly*heart": 0, "hernia*stomach": 1})
    assert t[ctrate.LABELS.index("Lung nodule")] == 1 and t[ctrate.LABELS.index("Cardiomegaly")] == 0
    assert t[ctrate.LABELS.index("Hiatal hernia")] == 1 and np.isnan(
        t[ctrate.LABELS.index("Mosaic attenuation pattern")]
    )
