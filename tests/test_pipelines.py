"""The NumPy input pipeline of the JAX and PyTorch backends: keyed on (seed, step), and the tf.data pipeline's twin.

The tests that compare with tf.data import TensorFlow; the others run without it (the TensorFlow-free CI step).
"""

import math

import numpy as np
import pytest
from scipy import stats

from snapshot_ensembles.data import augmentation, numpy_pipeline, stateless_random
from snapshot_ensembles.data import channel_statistics

SEEDS = [(7, 3), (0, 0), (123456789012, -5), (3, 2 ** 40 + 17)]


def images_and_labels(count=150, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, count).astype(np.int32)


@pytest.mark.parametrize("augment", ["original", "paper", "none"])
def test_a_resumed_run_sees_the_batches_of_the_uninterrupted_one(augment):
    x, y = images_and_labels()
    standardization = channel_statistics(x) if augment == "paper" else None
    full = list(numpy_pipeline.training_dataset(x, y, 32, 11, 0, 3, augment, standardization))
    resumed = list(numpy_pipeline.training_dataset(x, y, 32, 11, 2, 3, augment, standardization))
    assert len(full) == 15 and len(resumed) == 5
    for (images, labels), (images_resumed, labels_resumed) in zip(full[10:], resumed):
        np.testing.assert_array_equal(images, images_resumed)
        np.testing.assert_array_equal(labels, labels_resumed)
    assert full[-1][0].shape == (22, 32, 32, 3) and full[-1][0].dtype == np.float32  # the partial last batch
    # Every epoch is a permutation of the training set, a different one each epoch.
    orders = [np.concatenate([labels for _, labels in full[5 * e:5 * e + 5]]) for e in range(3)]
    assert all(sorted(order) == sorted(y) for order in orders) and not np.array_equal(orders[0], orders[1])


def test_a_batch_depends_on_the_seed_and_the_step_only():
    x, y = images_and_labels()
    batches = numpy_pipeline.TrainingBatches(x, y, 32, seed=5, augment="original")
    later_first = [batches.batch(step) for step in (9, 3)]  # any order, any thread
    again = numpy_pipeline.TrainingBatches(x, y, 32, seed=5, augment="original")
    np.testing.assert_array_equal(later_first[1][0], again.batch(3)[0])
    np.testing.assert_array_equal(later_first[0][0], again.batch(9)[0])
    other_seed = numpy_pipeline.TrainingBatches(x, y, 32, seed=6, augment="original")
    assert not np.array_equal(other_seed.batch(3)[0], again.batch(3)[0])
    # The same images in steps 0 and 5 (epoch 0 and 1 reorder them) are augmented differently.
    first, sixth = batches.batch(0), batches.batch(5)
    assert not np.array_equal(first[1], sixth[1])


def test_the_augmentations_draw_their_documented_distributions():
    seed = (1, 2)
    a0, a1, a2, b0, b1, b2 = augmentation.rotate_shift_transforms(
        augmentation.NumpyDraws, seed, 4000, np.float32(32), np.float32(32))
    angles = np.degrees(np.arctan2(b0, a0))
    assert stats.kstest(angles, stats.uniform(-15, 30).cdf).pvalue > 1e-3
    np.testing.assert_allclose(a0 ** 2 + b0 ** 2, 1, atol=1e-6)  # rotations: no scaling
    # The shift is what moves the centre pixel beyond the rotation about it: U(-5, 5) pixels each way.
    centre = 15.5
    shift_x = centre - (a0 * centre + a1 * centre + a2)
    assert stats.kstest(shift_x, stats.uniform(-5, 10).cdf).pvalue > 1e-3
    top, left, mirrored = augmentation.crop_flip_offsets(augmentation.NumpyDraws, seed, 9000)
    assert set(top) == set(left) == set(range(9)) and stats.chisquare(np.bincount(top)).pvalue > 1e-3
    assert abs(mirrored.mean() - 0.5) < 4 * math.sqrt(0.25 / 9000)


def test_crop_flip_pads_with_zeros_after_standardising():
    x = np.full((64, 32, 32, 3), 200, np.uint8)
    images, _ = numpy_pipeline.TrainingBatches(x, np.zeros(64), 64, seed=2, augment="paper",
                                               standardization=([100.0] * 3, [50.0] * 3)).batch(0)
    assert set(np.unique(images)) == {0.0, 2.0}  # the padding is the mean colour, the image (200 - 100) / 50
    assert (images == 0).any(axis=(1, 2, 3)).mean() > 0.8  # most crops are off-centre


@pytest.mark.parametrize("seed", SEEDS)
def test_the_numpy_draws_are_tensorflows_bit_for_bit(seed):
    tf = pytest.importorskip("tensorflow")
    tf_seed = tf.constant(seed, tf.int64)
    for shape in ([1], [5], [50000]):
        np.testing.assert_array_equal(stateless_random.uniform(shape, seed).view(np.uint32),
                                      tf.random.stateless_uniform(shape, tf_seed).numpy().view(np.uint32))
    np.testing.assert_array_equal(stateless_random.uniform([37], seed, -0.15625, 0.15625),
                                  tf.random.stateless_uniform([37], tf_seed, -0.15625, 0.15625).numpy())
    np.testing.assert_array_equal(stateless_random.integers([37], seed, 0, 9),
                                  tf.random.stateless_uniform([37], tf_seed, 0, 9, dtype=tf.int32).numpy())
    np.testing.assert_array_equal(stateless_random.split(seed, 3),
                                  tf.random.experimental.stateless_split(tf_seed, 3).numpy())


@pytest.mark.parametrize("augment, standardized", [("paper", True), ("paper", False), ("none", True),
                                                   ("original", False), ("original", True)])
def test_the_numpy_pipeline_gives_the_tf_data_pipelines_batches(augment, standardized):
    pytest.importorskip("tensorflow")
    from snapshot_ensembles.data import tf_pipeline

    x, y = images_and_labels(300, seed=1)
    standardization = channel_statistics(x) if standardized else None
    expected = list(tf_pipeline.training_dataset(x, y, 64, 5, 1, 3, augment, standardization))
    got = list(numpy_pipeline.training_dataset(x, y, 64, 5, 1, 3, augment, standardization))
    assert len(got) == len(expected) == 10
    for (images, labels), (tf_images, tf_labels) in zip(got, expected):
        np.testing.assert_array_equal(labels, tf_labels.numpy())
        # Bit for bit: the same draws, the same float32 arithmetic. The rotation's cos and sin may differ in
        # their last bit from TensorFlow's, moving a pixel that lies on a rounding boundary: a few at most.
        differing = np.any(images.view(np.uint32) != tf_images.numpy().view(np.uint32), axis=-1).mean()
        assert differing == 0 if augment != "original" else differing < 1e-3
    evaluation = numpy_pipeline.evaluation_dataset(x, y, 128, standardization)
    tf_evaluation = list(tf_pipeline.evaluation_dataset(x, y, 128, standardization))
    assert len(evaluation) == len(tf_evaluation) == 3
    for index, (tf_images, tf_labels) in enumerate(tf_evaluation):
        np.testing.assert_array_equal(evaluation[index][0], tf_images.numpy())
        np.testing.assert_array_equal(evaluation[index][1], tf_labels.numpy())
