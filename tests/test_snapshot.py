"""The schedule and the callbacks, checked on what the optimizer really used."""

import math
import os

import keras
import numpy as np
import pytest

from snapshot import SnapshotCallbackBuilder, SnapshotModelCheckpoint, cosine_annealing_lr


class LearningRateRecorder(keras.callbacks.Callback):
    """Reads the optimizer's learning rate right before each step: the value that step applies."""

    def __init__(self):
        super().__init__()
        self.per_step = []
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self._first_in_epoch = True

    def on_train_batch_begin(self, batch, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.per_step.append(lr)
        if self._first_in_epoch:
            self.per_epoch.append(lr)
            self._first_in_epoch = False


def tiny_model(metric="accuracy"):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=[metric])
    return model


def tiny_data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def fit(model, builder, prefix="Tiny", extra=(), batch_size=8):
    x, y = tiny_data()
    callbacks = builder.get_callbacks(model_prefix=prefix)
    history = model.fit(x, y, batch_size=batch_size, epochs=builder.T, validation_data=(x, y), verbose=0,
                        shuffle=False, callbacks=callbacks + list(extra))
    return callbacks, history


def test_epoch_mode_learning_rate_used_by_the_optimizer_matches_the_formula(tmp_path):
    builder = SnapshotCallbackBuilder(nb_epochs=9, nb_snapshots=3, init_lr=0.2, weights_dir=str(tmp_path))
    recorder = LearningRateRecorder()
    fit(tiny_model(), builder, extra=[recorder])
    expected = [0.2 / 2 * (math.cos(math.pi * (t % 3) / 3) + 1) for t in range(9)]
    np.testing.assert_allclose(recorder.per_epoch, expected, rtol=0, atol=1e-6)
    steps = len(recorder.per_step) // 9
    assert steps == 4
    # Constant within an epoch, as in the original.
    np.testing.assert_allclose(recorder.per_step, np.repeat(expected, steps), rtol=0, atol=1e-6)


def test_batch_mode_learning_rate_used_by_the_optimizer_matches_the_formula(tmp_path):
    builder = SnapshotCallbackBuilder(nb_epochs=6, nb_snapshots=2, init_lr=0.1, schedule="batch",
                                      weights_dir=str(tmp_path))
    recorder = LearningRateRecorder()
    _, history = fit(tiny_model(), builder, extra=[recorder])
    steps_per_epoch, cycle = 4, 3 * 4
    expected = [0.05 * (math.cos(math.pi * (t % cycle) / cycle) + 1) for t in range(6 * steps_per_epoch)]
    assert len(recorder.per_step) == len(expected)
    np.testing.assert_allclose(recorder.per_step, expected, rtol=0, atol=1e-6)
    # The history's rate of an epoch is that of its last step, as in epoch mode: near 0 where a cycle ends.
    np.testing.assert_allclose(history.history["learning_rate"], expected[steps_per_epoch - 1::steps_per_epoch],
                               rtol=0, atol=1e-6)


def test_callbacks_come_in_the_original_order_and_create_the_folder(tmp_path):
    folder = tmp_path / "new" / "weights"
    callbacks = SnapshotCallbackBuilder(10, 5, weights_dir=str(folder)).get_callbacks("Model_")
    assert folder.is_dir()
    assert [type(c).__name__ for c in callbacks] == ["BestWeightsCheckpoint", "EpochCosineScheduler",
                                                     "SnapshotModelCheckpoint"]
    assert callbacks[0].filepath == os.path.join(str(folder), "Model_-Best.weights.h5")
    (tmp_path / "a file").write_text("")
    with pytest.raises(ValueError, match="weights_dir .*a file is a file, not a folder"):
        SnapshotCallbackBuilder(10, 5, weights_dir=str(tmp_path / "a file")).get_callbacks("Model_")


@pytest.mark.parametrize("metric", ["accuracy", "acc"])
@pytest.mark.parametrize("epochs,snapshots", [(6, 3), (3, 3), (4, 1)])
def test_exactly_m_snapshots_numbered_1_to_m_and_a_best_checkpoint(tmp_path, metric, epochs, snapshots):
    builder = SnapshotCallbackBuilder(epochs, snapshots, weights_dir=str(tmp_path))
    callbacks, _ = fit(tiny_model(metric), builder)
    names = sorted(os.listdir(tmp_path))
    expected = sorted([f"Tiny-{i}.weights.h5" for i in range(1, snapshots + 1)] + ["Tiny-Best.weights.h5"])
    assert names == expected
    assert callbacks[0].monitor in ("val_accuracy", "val_acc")


def test_best_checkpoint_holds_the_best_epochs_weights(tmp_path):
    class Snapshotter(keras.callbacks.Callback):
        weights_at = {}

        def on_epoch_end(self, epoch, logs=None):
            self.weights_at[epoch] = (logs["val_accuracy"], [w.copy() for w in self.model.get_weights()])

    builder = SnapshotCallbackBuilder(6, 2, init_lr=0.5, weights_dir=str(tmp_path))
    model = tiny_model()
    fit(model, builder, extra=[Snapshotter()])
    best_epoch = max(Snapshotter.weights_at, key=lambda e: (Snapshotter.weights_at[e][0], -e))
    model.load_weights(str(tmp_path / "Tiny-Best.weights.h5"))
    for saved, expected in zip(model.get_weights(), Snapshotter.weights_at[best_epoch][1]):
        np.testing.assert_array_equal(saved, expected)


@pytest.mark.parametrize("epochs,snapshots,message", [(10, 3, "nb_epochs=10 must be a multiple of M"),
                                                      (10, 0, "nb_snapshots=0 is out of range"),
                                                      (0, 1, "nb_epochs=0 is out of range")])
def test_bad_snapshot_counts_are_refused(epochs, snapshots, message):
    with pytest.raises(ValueError, match=message):
        SnapshotCallbackBuilder(epochs, snapshots)
    with pytest.raises(ValueError, match=message):
        SnapshotModelCheckpoint(epochs, snapshots)


def test_original_private_schedule_name_still_works():
    builder = SnapshotCallbackBuilder(200, 5, 0.1)
    assert builder._cosine_anneal_schedule(0) == pytest.approx(0.1)
    assert builder._cosine_anneal_schedule(20) == pytest.approx(0.05)
    assert builder._cosine_anneal_schedule(40) == pytest.approx(0.1)
    assert cosine_annealing_lr(39, 40, 0.1) == pytest.approx(0.05 * (math.cos(math.pi * 39 / 40) + 1))
