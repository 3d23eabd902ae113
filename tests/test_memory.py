"""Prediction memory: the prediction flow reads the members one at a time from memory-mapped cache files.

With n samples, C classes and M members, `prediction.predict` may hold a few (n, C) float32 arrays and
the (n, M) float64 true-class matrix of the fit, but never an (M, n, C) array (for CIFAR-100's 50,000
training images and 100 members in float64 that would be 4 GB).
"""

import os
import tracemalloc

import numpy as np

from conftest import predict_argv, train_config
from snapshot_ensembles.data import Dataset
from snapshot_ensembles.models.build import build_model

# Test images enough that even 3 members fill the evaluation's fixed-size blocks (metrics.kl_matrix works
# on ~1M values at a time, however many members); the weights are fitted on the training images.
N_SAMPLES, N_TRAIN, N_CLASSES = 4000, 1000, 100
MEMBER_BYTES = N_SAMPLES * N_CLASSES * 4  # one member's float32 test probabilities: 1.6 MB
MODEL = ["--wrn_N", "1", "--wrn_k", "1"]
PREFIX = "WRN-CIFAR100-10-1"


def images_and_labels(rng, n):
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, N_CLASSES, n).astype(np.int32)


def peak_bytes(function, *args):
    tracemalloc.start()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prediction_memory_does_not_grow_with_members_times_samples_times_classes(tmp_path):
    """The whole flow (fit on the training set, equal and weighted ensembles, size curve, agreement plot) with
    3 and with 24 members; the members' predictions come from the cache, as in every run after the first."""
    rng = np.random.default_rng(0)
    data = Dataset(*images_and_labels(rng, N_TRAIN), *images_and_labels(rng, N_SAMPLES), N_CLASSES, "synthetic")
    model = build_model(train_config(*MODEL, dataset="cifar100").model, N_CLASSES)
    for name in ["Best"] + [str(i) for i in range(1, 24)]:  # one network's weights: predicted once per split
        model.save_weights(os.path.join(tmp_path, f"{PREFIX}-{name}.weights.h5"))

    def predict(m):
        return predict_argv("cifar100", MODEL + ["--optimize", "1", "--num_tests", "2", "--M", str(m),
                                                 "--weights_dir", str(tmp_path), "--plot"], data=data)

    assert len(predict(23)["networks_run"]) == 2  # fills the cache: test and training set
    few, many = peak_bytes(predict, 2), peak_bytes(predict, 23)
    # 21 more members add their (n,) true-class and argmax columns (32 kB each, a few of them), not 1.6 MB each
    # (measured: 23 kB in all; stacking the members' test probabilities would add 33.6 MB).
    assert many - few < 21 * MEMBER_BYTES / 4, (few, many)
