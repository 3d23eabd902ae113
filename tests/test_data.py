"""Offline CIFAR loading: archives, folders, the Keras cache, checksums and hostile pickles."""

import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from cifar_fixtures import write_archive, write_code_running_batch
from snapshot_ensembles import data
from snapshot_ensembles.errors import UserError


def test_archive_in_data_dir_is_read_in_nhwc_with_labels(tmp_path):
    path, sha = write_archive(str(tmp_path), "cifar10", train_per_batch=7, test_size=5)
    loaded = data.load_cifar("cifar10", str(tmp_path), expected_sha256=sha)
    assert loaded.x_train.shape == (35, 32, 32, 3) and loaded.x_train.dtype == np.uint8
    assert loaded.x_test.shape == (5, 32, 32, 3)
    assert loaded.y_train.dtype == np.int32 and loaded.nb_classes == 10
    # Row-major CHW planes in the file become HWC: pixel (0, 0) of image 0 is bytes 0, 1024, 2048.
    with tarfile.open(path) as tar:
        raw = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    assert list(loaded.x_train[0, 0, 0]) == [raw[b"data"][0, 0], raw[b"data"][0, 1024], raw[b"data"][0, 2048]]
    assert list(loaded.y_train[:7]) == raw[b"labels"]


def test_extracted_folder_and_cifar100_fine_labels(tmp_path):
    write_archive(str(tmp_path), "cifar100", train_per_batch=30, test_size=10, extracted=True)
    loaded = data.load_cifar("cifar100", str(tmp_path))
    assert loaded.x_train.shape == (30, 32, 32, 3) and loaded.nb_classes == 100
    # The extracted folder itself may be given too.
    again = data.load_cifar("cifar100", str(tmp_path / "cifar-100-python"))
    np.testing.assert_array_equal(again.y_test, loaded.y_test)


def test_keras_cache_is_used_when_no_data_dir(tmp_path, monkeypatch):
    cache = tmp_path / "kh" / "datasets"
    write_archive(str(cache), "cifar10", train_per_batch=4, test_size=4, extracted=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert data.load_cifar("cifar10").source == str(cache / "cifar-10-batches-py")
    # Keras >= 3.6 extracts under '<folder>-target/'.
    shutil.move(str(cache / "cifar-10-batches-py"), str(cache / "x"))
    os.makedirs(cache / "cifar-10-batches-py-target")
    shutil.move(str(cache / "x"), str(cache / "cifar-10-batches-py-target" / "cifar-10-batches-py"))
    assert data.load_cifar("cifar10").x_train.shape == (20, 32, 32, 3)


def test_official_checksum_is_enforced_by_default(tmp_path):
    write_archive(str(tmp_path), "cifar10", train_per_batch=2, test_size=2)
    with pytest.raises(UserError, match="SHA-256 .* expected 6d958be0"):
        data.load_cifar("cifar10", str(tmp_path))
    assert data.load_cifar("cifar10", str(tmp_path), expected_sha256="skip").x_train.shape[0] == 10


def test_corrupted_archive_is_a_clear_error(tmp_path):
    path, _ = write_archive(str(tmp_path), "cifar10", train_per_batch=2, test_size=2)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        data.load_cifar("cifar10", str(tmp_path), expected_sha256="skip")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    write_code_running_batch(str(tmp_path), marker)
    with pytest.raises(UserError, match="refusing to load .*system"):
        data.load_cifar("cifar10", str(tmp_path))
    assert not marker.exists()


def test_wrong_content_and_missing_members(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_archive(str(tmp_path), "cifar10", train_per_batch=2, test_size=2, extracted=True)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 42]}, fh)
    with pytest.raises(UserError, match="labels run from 0 to 42, outside the class ids 0 to 9"):
        data.load_cifar("cifar10", str(tmp_path))
    os.remove(folder / "data_batch_5")
    os.remove(folder / "test_batch")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "data_batch_1", "cifar-10-batches-py/data_batch_1")
    shutil.rmtree(folder)
    with pytest.raises(UserError, match="lacks .*data_batch_2"):
        data.load_cifar("cifar10", str(tmp_path), expected_sha256="skip")


def test_missing_data_dir_and_empty_data_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_cifar("cifar10", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="no CIFAR-100 data in .*cifar-100-python.tar.gz"):
        data.load_cifar("cifar100", str(tmp_path))
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")
    with pytest.raises(UserError, match=f"is a file: pass the folder that holds it \\(--data_dir {tmp_path}\\)"):
        data.load_cifar("cifar10", str(archive))  # the archive itself, a likely slip


def test_no_local_data_and_no_network_names_the_files(tmp_path, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(UserError, match="download failed .*cifar-10-python.tar.gz.*--data_dir"):
        data.load_cifar("cifar10")


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(10), 20).astype(np.int32)
    x = np.zeros((200, 1))
    train_idx, val_idx = data.split_validation(x, y, 0.1, seed=3)
    assert len(val_idx) == 20 and len(set(train_idx) | set(val_idx)) == 200
    assert np.bincount(y[val_idx]).tolist() == [2] * 10
    again, _ = data.split_validation(x, y, 0.1, seed=3)
    np.testing.assert_array_equal(again, train_idx)
    # Too small to stratify: a plain seeded split instead of a crash.
    train_idx, val_idx = data.split_validation(x[:12], y[:12], 0.25, seed=0)
    assert len(val_idx) == 3
