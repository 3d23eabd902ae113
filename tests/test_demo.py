"""The demo runs the real training and prediction flows on scikit-learn's digits."""

import os

import numpy as np

import demo
from conftest import run_script


def test_digits_become_a_stratified_32x32x3_dataset():
    data = demo.digits_dataset(seed=0)
    assert data.x_train.shape[1:] == (32, 32, 3) and data.x_train.dtype == np.uint8
    assert len(data.y_train) + len(data.y_test) == 1797
    assert abs(len(data.y_test) - 1797 * demo.TEST_FRACTION) <= 1
    assert np.all(np.bincount(data.y_test) >= 17)  # every digit in the test set
    assert data.x_train.max() > 200  # scaled from 0..16 to 0..255


def test_short_demo_writes_real_snapshots_and_reports(tmp_path):
    result = run_script("demo.py", "--nb_epoch", 2, "--M", 2, "--weights_dir", tmp_path, "--seed", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    snapshots = sorted(os.listdir(tmp_path / "snapshots"))
    for name in ("WRN-DIGITS-10-1-Best.weights.h5", "WRN-DIGITS-10-1-1.weights.h5", "WRN-DIGITS-10-1-2.weights.h5",
                 "Ensemble-weights-WRN-DIGITS-10-1.json"):
        assert name in snapshots
    assert "WRN-DIGITS-10-1-1.weights.h5" in os.listdir(tmp_path / "baseline")
    for text in ("equal-weight ensemble", "weighted ensemble (fitted)", "Summary", "baseline (one cycle"):
        assert text in result.stdout
