"""Snapshot ensembles of your own Keras model and data: a small network on scikit-learn's digits.

    python -m examples.own_model [weights folder]      # in the checkout
    python examples/own_model.py [weights folder]      # anywhere, once the package is installed (pip install .)

Trains once with the snapshot callbacks (M cosine cycles, one snapshot per cycle), then ensembles
the snapshots with SnapshotEnsemble: weights fitted on the validation split, report on the test set.
"""

import os
import sys
import tempfile

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from snapshot_ensembles import SnapshotEnsemble
from snapshot_ensembles.training.callbacks import SnapshotCallbackBuilder

EPOCHS, SNAPSHOTS = 30, 3


def build_model():
    """Your own network: anything that ends in a softmax."""
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def main(weights_dir):
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x, y = digits.data.astype("float32") / 16.0, digits.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.3, random_state=0,
                                                      stratify=y_train)

    # 1. Train once; the callbacks save the best checkpoint and one snapshot per cosine cycle.
    model = build_model()
    model.compile(keras.optimizers.SGD(momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    snapshot = SnapshotCallbackBuilder(nb_epochs=EPOCHS, nb_snapshots=SNAPSHOTS, init_lr=0.1,
                                       weights_dir=weights_dir)
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS, batch_size=32, verbose=0,
              callbacks=snapshot.get_callbacks(model_prefix="digits"))

    # 2. Ensemble the snapshots: fit their weights on the validation split, evaluate on the test set.
    ensemble = SnapshotEnsemble.from_run(build_model, weights_dir, "digits")  # Best, snapshots 1..M
    ensemble.fit_weights(x_val, y_val, exclude=["Best"])  # Best was chosen on these same samples
    ensemble.save_weights_json(os.path.join(weights_dir, "digits-ensemble.json"))
    report = ensemble.evaluate(x_test, y_test)
    for name, accuracy in zip(report.names, report.member_accuracy):
        print(f"{name:>6}: {accuracy:.2%}")
    print(f"equal weights: {report.equal_accuracy:.2%}, fitted weights: {report.weighted_accuracy:.2%} "
          f"{[round(float(w), 3) for w in report.weights]}")
    return report


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="own-model-"))
