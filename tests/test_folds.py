"""Cross-validation folds: the generated K-fold of the core, PTB-XL's official strat_fold, and ``--fold`` runs."""

import json

import numpy as np
import pytest

from medml.cli import main
from medml.config import load_config, resolve_recipe
from medml.engine.data import kfold_indices
from medml.errors import ConfigError
from medml.pipelines.ecg.data import EcgDataModule
from medml.registry import get_pipeline


def test_kfold_partitions_deterministically_and_keeps_groups():
    folds = [kfold_indices(23, k, 5) for k in range(5)]
    vals = [set(v) for _, v in folds]
    assert set().union(*vals) == set(range(23)) and sum(map(len, vals)) == 23  # a partition
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == 23
    assert folds == [kfold_indices(23, k, 5) for k in range(5)]  # the same every time
    groups = [i // 4 for i in range(40)]  # e.g. 4 frames per video
    for k in range(3):
        _, val = kfold_indices(40, k, 3, groups)
        chosen = {groups[i] for i in val}
        assert all((groups[i] in chosen) == (i in val) for i in range(40))  # whole groups only
    with pytest.raises(ConfigError, match="only 2"):
        kfold_indices(2, 0, 5)


def test_ecg_official_folds(tiny_demo):
    demo = tiny_demo("ecg")
    cls = get_pipeline("ecg")
    config = load_config(cls.Config, resolve_recipe("ecg", "tiny"))
    dm = EcgDataModule(demo.data_dir, config)
    dm.fold = 3
    dm.setup("fit")
    folds = np.asarray(dm.ptbxl.folds)
    assert set(folds[dm.val_index]) == {3}
    assert set(folds[dm.train_index]) == set(range(1, 10)) - {3}  # fold 10 stays the test set
    assert dm.split_summary["val_folds"] == [3]
    default = EcgDataModule(demo.data_dir, config)
    default.setup("fit")
    nine = EcgDataModule(demo.data_dir, config)
    nine.fold = 9
    nine.setup("fit")
    assert np.array_equal(nine.val_index, default.val_index)  # --fold 9 is the default split
    wrong = EcgDataModule(demo.data_dir, config)
    wrong.fold = 10
    with pytest.raises(ConfigError, match="official folds are 1..9"):
        wrong.setup("fit")


def test_train_fold_records_and_resume_keeps_it(toy_data, tmp_path, capsys):
    run = tmp_path / "fold1"
    argv = ["train", "toy", "--data", str(toy_data), "--out", str(run), "--fold", "1", "--folds", "4"]
    assert main([*argv, "--set", "train.max_epochs=1", "stages.1.enabled=false"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["fold"]["fold"] == 1 and record["fold"]["scheme"] == "generated"
    assert record["split"]["n_train"] + record["split"]["n_val"] == 64 and record["split"]["n_val"] == 16
    capsys.readouterr()
    code = main(["train", "toy", "--data", str(toy_data), "--out", str(run), "--resume", "--fold", "2"])
    assert code == 2 and "omit --fold" in capsys.readouterr().err
    code = main(["train", "toy", "--data", str(toy_data), "--out", str(tmp_path / "x"), "--fold", "7"])
    assert code == 2 and "generated folds are 0..4" in capsys.readouterr().err
