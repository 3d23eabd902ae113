"""The paper's training recipe beside the original's: flags, weight decay, crop-and-flip, multistep, ResNet."""

import json
import os
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from snapshot_ensembles import cli, prediction, training
from snapshot_ensembles.config import ModelConfig
from snapshot_ensembles.config.schedule import multistep_lr
from snapshot_ensembles.data import channel_statistics
from snapshot_ensembles.data.tf_pipeline import random_crop_flip, training_dataset
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.models.build import build_model
from snapshot_ensembles.training import run_state
from conftest import predict_argv, train_config, train_from_flags

RECIPE_FLAGS = ("batch_size", "momentum", "nesterov", "weight_decay", "schedule", "augment", "normalize", "dropout")


def resolved(*argv):
    """The resolved configuration of the training flags `argv`, flat, as the run record stores it."""
    return SimpleNamespace(**train_config(*argv).to_dict())


def recipe_values(args):
    return {name: getattr(args, name) for name in RECIPE_FLAGS}


# Huang et al. (2017), section 4 and their Torch code: Nesterov SGD 0.9, batch 64, per-iteration annealing,
# padded crops and flips on standardised images, no dropout; weight decay 5e-4 (WRN and ResNet-110), 1e-4
# (DenseNet).
@pytest.mark.parametrize("model,weight_decay", [("wrn", 5e-4), ("resnet", 5e-4), ("dn", 1e-4)])
def test_paper_recipe_resolves_to_the_papers_values(model, weight_decay):
    assert recipe_values(resolved("--recipe", "paper", "--model", model)) == dict(
        batch_size=64, momentum=0.9, nesterov=True, weight_decay=weight_decay, schedule="batch", augment="paper",
        normalize="channel", dropout=0.0)


@pytest.mark.parametrize("model,batch_size,weight_decay,dropout", [("wrn", 128, 0.0, 0.0), ("dn", 64, 2e-4, 0.2)])
def test_original_recipe_is_the_default_and_the_original_scripts_training(model, batch_size, weight_decay, dropout):
    # The original DenseNet's L2(1e-4) penalty is a weight decay of 2e-4 as the paper counts it.
    args = resolved("--model", model)
    assert args.recipe == "original"
    assert recipe_values(args) == dict(batch_size=batch_size, momentum=0.0, nesterov=False, weight_decay=weight_decay,
                                       schedule="epoch", augment="original", normalize="unit", dropout=dropout)


def test_explicit_flags_override_the_recipe():
    args = resolved("--recipe", "paper", "--batch_size", "32", "--momentum", "0.5", "--no_nesterov",
                    "--weight_decay", "0", "--schedule", "epoch", "--no_augment", "--normalize", "unit",
                    "--dropout", "0.3")
    assert recipe_values(args) == dict(batch_size=32, momentum=0.5, nesterov=False, weight_decay=0.0,
                                       schedule="epoch", augment="none", normalize="unit", dropout=0.3)
    args = resolved("--weight_decay", "1e-3", "--augment", "paper", "--nesterov", "--momentum", "0.9")
    assert (args.weight_decay, args.augment, args.nesterov, args.schedule) == (1e-3, "paper", True, "epoch")


@pytest.mark.parametrize("argv,message", [
    (["--no_augment", "--augment", "paper"], "--no_augment contradicts --augment paper"),
    (["--recipe", "paper", "--momentum", "0"], "^--recipe paper trains with Nesterov momentum, which --momentum 0 "
                                                r"contradicts: add --no_nesterov for plain SGD, or give a momentum"),
    (["--nesterov", "--momentum", "0"], "^--nesterov needs a momentum: add for example --momentum 0.9"),
    (["--schedule", "multistep"], "--M 1"),
])
def test_contradictory_flags_are_refused(argv, message):
    with pytest.raises(UserError, match=message):
        resolved(*argv)


def test_recipes_compare_by_value(tmp_path):
    where = str(tmp_path)
    flags = run_state.run_flags(vars(resolved("--no_augment")))
    run_state.check_same_run(flags, run_state.run_flags(vars(resolved("--augment", "none"))), "a run", where)
    with pytest.raises(UserError, match="--augment none \\(now original\\)"):
        run_state.check_same_run(flags, run_state.run_flags(vars(resolved())), "a run", where)
    with pytest.raises(UserError, match="--normalize unit \\(now channel\\).*--weight_decay 0 \\(now 0.0005\\)"):
        run_state.check_same_run(flags, run_state.run_flags(vars(resolved("--recipe", "paper"))), "a run", where)
    with pytest.raises(UserError, match="--weight_decay 0.0002 \\(now 0.0001\\)"):
        run_state.check_same_run(run_state.run_flags(vars(resolved("--model", "dn"))),
                                 run_state.run_flags(vars(resolved("--model", "dn", "--weight_decay", "1e-4"))),
                                 "a run", where)
    # The recipe's name is not compared, its values are.
    paper = run_state.run_flags(vars(resolved("--recipe", "paper")))
    spelled_out = run_state.run_flags(vars(resolved(
        "--batch_size", "64", "--momentum", "0.9", "--nesterov", "--weight_decay", "5e-4", "--schedule", "batch",
        "--augment", "paper", "--normalize", "channel", "--dropout", "0", "--bn_momentum", "0.9",
        "--variant", "paper")))
    run_state.check_same_run(paper, spelled_out, "a run", where)


@pytest.mark.parametrize("model_flags", [dict(model="wrn", wrn_N=1, wrn_k=1), dict(model="resnet", resnet_depth=8),
                                         dict(model="dn", dn_depth=7, dn_growth_rate=4, dn_blocks=1)])
def test_weight_decay_is_half_its_value_times_the_squared_weights_in_the_training_loss(model_flags):
    images = np.random.default_rng(0).random((8, 32, 32, 3)).astype("float32")
    labels = np.arange(8) % 10
    evaluated, trained, weights = {}, {}, None
    for weight_decay in (0.0, 1e-3):
        model = build_model(ModelConfig(**model_flags), 10, dropout=0.0, weight_decay=weight_decay)
        weights = weights or model.get_weights()
        model.set_weights(weights)  # the same weights: only the penalty differs
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        evaluated[weight_decay] = model.evaluate(images, labels, batch_size=8, verbose=0)
        # The loss SGD follows (one step at learning rate 0: the weights stay as they are).
        trained[weight_decay] = model.fit(images, labels, batch_size=8, epochs=1, verbose=0).history["loss"][0]
    squares = sum(float(np.sum(np.square(variable.numpy()))) for variable in model.trainable_variables)
    for losses in (evaluated, trained):
        np.testing.assert_allclose(losses[1e-3] - losses[0.0], 1e-3 / 2 * squares, rtol=1e-4)


def test_the_densenet_original_weight_decay_is_its_builders_penalty_unchanged():
    losses, weights = [], None
    for weight_decay in (None, 2e-4):  # None: the builder's own L2(1e-4) on every weight
        model = build_model(ModelConfig(model="dn", dn_depth=7, dn_growth_rate=4, dn_blocks=1), 10, dropout=0.0,
                            weight_decay=weight_decay)
        weights = weights or model.get_weights()
        model.set_weights(weights)
        losses.append([float(loss) for loss in model.losses])
    assert len(losses[0]) == len(losses[1]) > 0 and losses[0] == losses[1]


def brute_force_crops(images, padding=4):
    """Every (top, left, mirrored) crop of every zero-padded image."""
    padded = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    size = images.shape[1]
    return [[padded[i, top:top + size, left:left + size][:, ::-1 if mirrored else 1]
             for top in range(2 * padding + 1) for left in range(2 * padding + 1) for mirrored in (False, True)]
            for i in range(len(images))]


def test_crop_and_flip_are_seeded_padded_crops_mirrored_about_half_the_time():
    images = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype("float32")
    seed = tf.constant([7, 3], tf.int64)
    out = random_crop_flip(tf.constant(images), seed).numpy()
    np.testing.assert_array_equal(out, random_crop_flip(tf.constant(images), seed).numpy())
    assert not np.array_equal(out, random_crop_flip(tf.constant(images), tf.constant([7, 4], tf.int64)).numpy())
    candidates = brute_force_crops(images)
    matches = [[k for k, crop in enumerate(candidates[i]) if np.array_equal(crop, out[i])] for i in range(len(out))]
    assert all(matches), "every output is one crop of its padded image, mirrored or not"
    mirrored = sum(match[0] % 2 for match in matches)
    assert 16 <= mirrored <= 48  # half of 64, give or take 4 standard deviations
    shifted = sum(match[0] // 2 != 4 * 9 + 4 for match in matches)  # not the centred crop
    assert shifted >= 48


def test_paper_augmentation_is_exactly_resumable_in_the_pipeline():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (50, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 50)
    standardization = channel_statistics(x)
    full = list(training_dataset(x, y, 16, 3, 0, 3, augment="paper", standardization=standardization))
    resumed = list(training_dataset(x, y, 16, 3, 2, 3, augment="paper", standardization=standardization))
    assert len(full) == 12 and len(resumed) == 4
    for (a, labels_a), (b, labels_b) in zip(full[8:], resumed):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(labels_a.numpy(), labels_b.numpy())
    # Standardised: the unpadded batch has about zero mean and unit deviation per channel.
    plain = next(iter(training_dataset(x, y, 50, 3, 0, 1, augment="none", standardization=standardization)))[0]
    np.testing.assert_allclose(plain.numpy().mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(plain.numpy().std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_channel_statistics_are_those_of_the_training_pixels():
    x = np.random.default_rng(1).integers(0, 256, (2500, 4, 4, 3)).astype(np.uint8)
    mean, std = channel_statistics(x, chunk=1000)  # chunks that do not divide the count
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x.reshape(-1, 3).std(axis=0), rtol=1e-12)


def test_multistep_learning_rate_read_from_the_optimizer_matches_its_formula():
    from snapshot import SnapshotCallbackBuilder

    seen = []

    class ReadLearningRate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    builder = SnapshotCallbackBuilder(8, 1, 0.2, schedule="multistep", save_enabled=False)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="sparse_categorical_crossentropy")
    schedule = builder.get_callbacks()[1]
    model.fit(np.zeros((4, 2)), np.zeros(4), epochs=8, verbose=0, callbacks=[schedule, ReadLearningRate()])
    np.testing.assert_allclose(seen, [multistep_lr(epoch, 8, 0.2) for epoch in range(8)], rtol=1e-6)
    # The paper's Torch code on one-based epochs: /10 from epoch T/2 = 4, /100 from 3T/4 = 6.
    np.testing.assert_allclose(seen, [0.2] * 3 + [0.02] * 2 + [0.002] * 3, rtol=1e-6)
    with pytest.raises(ValueError, match="one snapshot: use nb_snapshots=1"):
        SnapshotCallbackBuilder(8, 2, 0.2, schedule="multistep")


def test_resnet_110_is_the_papers_1_7_million_parameter_network():
    from models import create_resnet

    model = create_resnet((32, 32, 3), nb_classes=10, depth=110, verbose=0)
    n, trainable = 18, sum(int(np.prod(variable.shape)) for variable in model.trainable_variables)
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731 - 3x3 kernels, no bias
    blocks = [(16, 16)] * n + [(16, 32)] + [(32, 32)] * (n - 1) + [(32, 64)] + [(64, 64)] * (n - 1)
    expected = conv(3, 16) + 2 * 16 + sum(conv(c_in, c_out) + conv(c_out, c_out) + 4 * c_out
                                          for c_in, c_out in blocks) + 64 * 10 + 10
    assert trainable == expected == 1_727_962  # "1.7M" in He et al. (2016) and the paper
    weighted = [layer for layer in model.layers if layer.weights and "batch_normalization" not in layer.name]
    assert len(weighted) == 110  # 109 convolutions and the classifier: the type-A shortcuts have no weights
    assert model.output_shape == (None, 10)


def test_paper_recipe_run_records_its_values_and_prediction_standardises_as_training_did(cifar10_dir, tmp_path):
    data_dir, sha = cifar10_dir
    argv = ["--model", "resnet", "--resnet_depth", "8", "--recipe", "paper", "--nb_epoch", "2", "--M", "2",
            "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", str(tmp_path)]
    model, _ = train_from_flags("cifar10", argv)
    info = json.loads((tmp_path / "ResNet-CIFAR10-8-run.json").read_text())
    assert {name: info["args"][name] for name in RECIPE_FLAGS} == dict(
        batch_size=64, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="batch", augment="paper",
        normalize="channel", dropout=0.0)
    data, splits = training.load_training_data(train_config(*argv))
    np.testing.assert_allclose(info["standardization"], channel_statistics(splits.x_train))
    assert prediction.recorded_standardization(str(tmp_path), "ResNet-CIFAR10-8") == tuple(info["standardization"])

    # The members predicted by the prediction flow are the model as training evaluated it.
    member = prediction.Member("2", os.path.join(tmp_path, "ResNet-CIFAR10-8-2.weights.h5"))
    predictor = prediction.MemberPredictor(cli.predict_config(
        "cifar10", ["--model", "resnet", "--resnet_depth", "8", "--weights_dir", str(tmp_path)]), [member])
    from snapshot_ensembles.data.pipeline import images_dataset

    expected = model.predict(images_dataset(data.x_test, 64, info["standardization"]), verbose=0)
    np.testing.assert_allclose(predictor(member, data.x_test), expected, rtol=0, atol=1e-5)
    unstandardised = model.predict(images_dataset(data.x_test, 64), verbose=0)
    assert np.abs(unstandardised - expected).max() > 1e-3

    # The exported one-file ensemble standardises raw pixels as training did.
    export_path = str(tmp_path / "ensemble.keras")
    result = predict_argv("cifar10", ["--model", "resnet", "--resnet_depth", "8", "--data_dir", data_dir,
                                      "--data_sha256", sha, "--weights_dir", str(tmp_path), "--optimize", "-1",
                                      "--export", export_path])
    exported = keras.saving.load_model(export_path).predict(data.x_test.astype("float32"), verbose=0)
    np.testing.assert_allclose(exported, result["probabilities"], rtol=0, atol=1e-5)

    with open(tmp_path / "ResNet-CIFAR10-8-run.json", "w") as fh:
        json.dump(dict(info, standardization=[[1, 2, 3], [0, 1, 1]]), fh)
    with pytest.raises(UserError, match="standardization .* not readable"):
        prediction.recorded_standardization(str(tmp_path), "ResNet-CIFAR10-8")
