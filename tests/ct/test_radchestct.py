"""RAD-ChestCT adapter: the release's layout and labels, its fixed geometry read the right way round, archives
checked before they are inflated, and the external evaluation of a CT-RATE-trained model on the 16 shared labels."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import pytest

from medml.config import load_config, resolve_recipe
from medml.data import radchestct
from medml.data.synthetic_ctrate import chest_hu, grid_points, random_chest
from medml.data.synthetic_radchestct import synthesize_radchestct, write_npz
from medml.engine.checkpoint import load_checkpoint
from medml.errors import CorruptFileError, DataLayoutError, ReadError, TooLargeError, UnsupportedFormatError
from medml.io.guard import set_memory_budget
from medml.pipelines.ct.config import CtConfig
from medml.pipelines.ct.data import dataset_kind
from medml.pipelines.ct.pipeline import CtPipeline
from medml.transforms.ct import HUWindow, axcodes_directions, ct_preprocess

SPACING = (8.0, 7.5, 7.5)  # the synthetic release's grid (slices, rows, columns); the real one is 0.8 mm
LEFT_OUT = [4, 13]  # Coronary artery wall calcification, Mosaic attenuation pattern


@pytest.fixture(scope="module")
def radchest(tmp_path_factory) -> Path:
    return synthesize_radchestct(tmp_path_factory.mktemp("radchest") / "RAD-ChestCT", (1, 1, 14), spacing=SPACING)


def test_release_layout_labels_and_detection(radchest):
    listing = radchestct.read_split(radchest, "test")
    assert len(listing.volumes) == 14 and listing.label_rows == 15 and listing.missing == ["tst00015"]
    targets = np.array([v.labels for v in listing.volumes])
    assert np.isnan(targets[:, LEFT_OUT]).all() and not np.isnan(np.delete(targets, LEFT_OUT, 1)).any()
    assert 0 < np.delete(targets, LEFT_OUT, 1).mean() < 1
    assert {v.split for v in radchestct.read_split(radchest, "all").volumes} == {"train", "valid", "test"}
    config = load_config(CtConfig, resolve_recipe("ct", "tiny"))
    assert dataset_kind(radchest, config) == "rad-chestct"
    pipeline = CtPipeline(config)
    pipeline.check_layout(radchest)
    with pytest.raises(DataLayoutError, match="external evaluation") as err:
        pipeline.datamodule(radchest)
    assert str(radchest) in str(err.value)
    with pytest.raises(DataLayoutError, match="unknown RAD-ChestCT split"):
        radchestct.read_split(radchest, "fold3")


def test_bad_label_value_names_the_csv(tmp_path):
    root = synthesize_radchestct(tmp_path / "r", (0, 0, 2), shape=(16, 16, 16), spacing=(20.0, 20.0, 20.0), missing=0)
    csv_path = root / radchestct.LABEL_FILES["test"]
    text = csv_path.read_text().splitlines()
    text[1] = text[1][: text[1].rindex(",")] + ",yes"
    csv_path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataLayoutError, match="not 0 or 1") as err:
        radchestct.read_split(root, "test")
    assert csv_path.name in str(err.value) and "\n" not in str(err.value)


def test_release_geometry_is_read_the_right_way_round(tmp_path):
    """An asymmetric chest (left-lung nodules, posterior effusion) stored on the release's axes and read back lands
    where the same chest sampled directly on the model's SLP grid lies; any flip would move it."""
    labels = np.zeros(18, int)
    labels[[9, 12, 5]] = 1  # lung nodules (left), pleural effusion (posterior base), hiatal hernia (low)
    chest = random_chest(np.random.default_rng(0), labels)
    direction = axcodes_directions("IPL")[::-1].T
    points, _ = grid_points((40, 48, 48), (SPACING[2], SPACING[1], SPACING[0]), direction)
    write_npz(tmp_path / "x.npz", chest_hu(points, chest))
    volume = radchestct.load_volume(tmp_path / "x.npz", radchestct.RadChestSettings(spacing=SPACING))
    assert volume.array.dtype == np.float32 and volume.spacing == (7.5, 7.5, 8.0)
    size, spacing = (24, 32, 32), (11.5, 8.0, 8.0)
    image = ct_preprocess(spacing, size)({"image": volume})["image"]
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).astype(float)
    slp = (index - (np.array(size) - 1) / 2) @ (axcodes_directions("SLP") * np.array(spacing)[:, None])
    expected = HUWindow()(chest_hu(slp, chest).astype(np.float32))
    err = np.abs(image - expected).mean()
    assert err < 0.06
    for flipped in (image[::-1], image[:, ::-1], image[:, :, ::-1]):
        assert np.abs(flipped - expected).mean() > 2 * err


def _npz_with_header(path: Path, header_shape, data: np.ndarray) -> Path:
    """An .npz whose .npy header names ``header_shape`` but holds ``data``'s bytes (a header that lies)."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(data.dtype), "fortran_order": False,
                                            "shape": tuple(header_shape)})  # fmt: skip
    buf.write(data.tobytes())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ct.npy", buf.getvalue())
    return path


def test_damaged_or_lying_archives_stop_with_one_line_naming_the_file(tmp_path):
    air = np.full((16, 16, 16), -1000, np.int16)
    air[4:12, 4:12, 4:12] = 40
    good = tmp_path / "good.npz"
    np.savez_compressed(good, ct=air)
    assert np.array_equal(radchestct.read_npz_array(good), air)

    def refused(path: Path, error=ReadError, match: str | None = None):
        with pytest.raises(error, match=match) as err:
            radchestct.load_volume(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(truncated, CorruptFileError, "truncated or damaged")
    damaged = tmp_path / "damaged.npz"
    raw = bytearray(good.read_bytes())
    raw[120:130] = b"\xff" * 10  # inside the deflate stream
    damaged.write_bytes(bytes(raw))
    refused(damaged, ReadError)
    refused(_npz_with_header(tmp_path / "lies.npz", (64, 64, 64), air), CorruptFileError, "promises 64x64x64")
    set_memory_budget(10**8)
    try:  # 1024^3 int16 is 2 GB (plus its float32 copy): refused from the header, nothing allocated
        refused(_npz_with_header(tmp_path / "huge.npz", (1024, 1024, 1024), air), TooLargeError, "1024x1024x1024")
    finally:
        set_memory_budget(None)
    np.savez_compressed(tmp_path / "flat.npz", ct=air[0])
    refused(tmp_path / "flat.npz", UnsupportedFormatError, "shape")
    np.savez_compressed(tmp_path / "complex.npz", ct=air.astype(np.complex64))
    refused(tmp_path / "complex.npz", UnsupportedFormatError, "dtype complex64")
    np.savez_compressed(tmp_path / "scaled.npz", ct=(air + 1000) / 1040.0)
    refused(tmp_path / "scaled.npz", UnsupportedFormatError, "not Hounsfield units")
    np.savez_compressed(tmp_path / "keys.npz", image=air, mask=air > 0)
    refused(tmp_path / "keys.npz", UnsupportedFormatError, "no array 'ct'")


def test_external_evaluation_on_the_16_shared_labels(tiny_demo, radchest, tmp_path):
    pipeline, module = load_checkpoint(tiny_demo("ct").checkpoint, expect_pipeline="ct")
    pipeline.config.data.radchest.spacing = SPACING
    metrics = pipeline.evaluate(module, radchest, "test", tmp_path)
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["dataset"] == "rad-chestct" and result["n"] == 14 and result["label_rows_without_volume"] == 1
    assert len(result["per_label"]) == 16
    assert result["labels_left_out"] == ["Coronary artery wall calcification", "Mosaic attenuation pattern"]
    # The same phantoms as the synthetic CT-RATE it was trained on: the tiny model transfers only if the release's
    # geometry is read the right way round (flipped axes put every finding elsewhere).
    assert metrics["macro_auroc"] >= 0.7, metrics["macro_auroc"]
    assert "EXACT fine-tuned" in (tmp_path / "comparison.md").read_text()
