"""Keras 1 (Theano) weight files -> Keras 3: snapshot_ensembles/release/legacy.py and convert_weights.py."""

import os

import h5py
import keras
import numpy as np
import pytest
from conftest import USER_ERROR, assert_clean_failure, run_script
from scipy import signal

import convert_weights
import keras1_reference
from legacy_writer import write_legacy_weights
from models.dense_net import create_dense_net
from models.wide_residual_net import create_wide_residual_network
from snapshot_ensembles.cli import run_cli
from snapshot_ensembles.config import ModelConfig
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.models.build import build_model
from snapshot_ensembles.release.legacy import convert_legacy_weights, read_legacy_weights


def tiny_wrn(N=1, k=1):
    return create_wide_residual_network((32, 32, 3), 10, N=N, k=k, verbose=0)


def tiny_densenet(nb_dense_block, img_dim=(8, 8, 3)):
    return create_dense_net(10, img_dim, depth=7, nb_dense_block=nb_dense_block, growth_rate=4,
                            dropout_rate=0.2, verbose=False)


def randomise(model, seed=0):
    """Random weights everywhere, BN moving statistics included (variances positive)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (v.shape for v in values)
            values = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta),
                      rng.normal(0, 0.1, mean), rng.uniform(0.5, 1.5, variance)]
        else:
            fan_in = int(np.prod(values[0].shape[:-1]))
            values = [rng.normal(0, 1 / np.sqrt(fan_in), v.shape) for v in values]
        layer.set_weights([v.astype("float32") for v in values])
    return model


def random_images(shape, n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def write_h5_by_hand(path, legacy_layers):
    """A Keras 1 weight file written independently of write_legacy_weights: [(name, [(weight name, array)])]."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name for name, _ in legacy_layers], dtype="S")
        for name, weights in legacy_layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([w for w, _ in weights], dtype="S") if weights else []
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=value)


def assert_same_predictions(model_a, model_b):
    x = random_images(model_a.input_shape[1:])
    np.testing.assert_allclose(model_a.predict(x, verbose=0), model_b.predict(x, verbose=0), atol=1e-5)


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, dim_ordering", [("theano", "th"), ("tensorflow", "tf")])
def test_wrn_round_trip_gives_the_same_network(tmp_path, backend, dim_ordering):
    source = randomise(tiny_wrn())
    path = str(tmp_path / "WRN-CIFAR10-10-1-Best.h5")
    write_legacy_weights(source, path, backend=backend, dim_ordering=dim_ordering)

    restored = tiny_wrn()
    convert_legacy_weights(restored, read_legacy_weights(path), backend=backend, dim_ordering=dim_ordering)

    for a, b in zip(source.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert_same_predictions(source, restored)


@pytest.mark.parametrize("nb_dense_block", [1, 3])
def test_densenet_round_trip_gives_the_same_network(tmp_path, nb_dense_block):
    source = randomise(tiny_densenet(nb_dense_block))
    path = str(tmp_path / "dn.h5")
    write_legacy_weights(source, path)

    restored = tiny_densenet(nb_dense_block)
    convert_legacy_weights(restored, read_legacy_weights(path))
    assert_same_predictions(source, restored)


def test_written_file_has_the_keras1_layout(tmp_path):
    model = randomise(tiny_wrn())
    path = str(tmp_path / "legacy.h5")
    write_legacy_weights(model, path)

    with h5py.File(path, "r") as f:
        assert set(f.attrs) == {"layer_names"}  # Keras 1.1.1 recorded neither version nor backend
        layer_names = [n.decode("utf8") for n in f.attrs["layer_names"]]
        assert len(layer_names) == len(model.layers)  # weightless layers are listed too
        assert layer_names[0] == "input_1" and layer_names[-1] == "dense_1"
        for name, layer in zip(layer_names, model.layers):
            weight_names = [n.decode("utf8") for n in f[name].attrs["weight_names"]]
            stored = [f[name][w][()] for w in weight_names]
            if isinstance(layer, keras.layers.Conv2D):
                assert name.startswith("convolution2d_")
                assert weight_names == [f"{name}_W", f"{name}_b"]
                kernel = layer.get_weights()[0]
                rows, cols, channels_in, filters = kernel.shape
                assert stored[0].shape == (filters, channels_in, rows, cols)
                # Theano's convolution sees the kernel flipped on both spatial axes
                np.testing.assert_array_equal(stored[0], np.transpose(kernel[::-1, ::-1], (3, 2, 0, 1)))
            elif isinstance(layer, keras.layers.BatchNormalization):
                assert weight_names == [f"{name}_{s}" for s in ("gamma", "beta", "running_mean", "running_std")]
                np.testing.assert_array_equal(stored[3], layer.moving_variance.numpy())
            elif isinstance(layer, keras.layers.Dense):
                assert stored[0].shape == tuple(layer.kernel.shape)  # (in, out) in both versions
            else:
                assert weight_names == []


def test_shortcut_conv_is_stored_after_its_blocks_second_bn():
    """File order is Keras 1's model.layers order, sorted by depth like Keras 3's, not creation order."""
    model = tiny_wrn(N=1, k=2)
    weighted = [layer for layer in model.layers if layer.weights]
    shortcut = next(layer for layer in weighted
                    if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1))
    position = weighted.index(shortcut)
    assert [type(layer).__name__ for layer in weighted[position - 4:position]] == \
        ["Conv2D", "BatchNormalization", "Conv2D", "BatchNormalization"]


@pytest.mark.parametrize("build", [lambda: tiny_wrn(N=2, k=2), lambda: tiny_densenet(3)], ids=["wrn", "densenet"])
def test_no_two_weighted_layers_share_a_depth(build):
    """Without depth ties the order cannot hinge on how either version breaks them."""
    for operations in build()._operations_by_depth.values():
        assert sum(1 for op in operations if op.weights) <= 1


# --- conventions checked against independent arithmetic ---------------------------------------

def conv_model(input_shape, filters):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Conv2D(filters, 3, padding="same")(inputs))


@pytest.mark.parametrize("backend, scipy_op, other_op", [("theano", signal.convolve2d, signal.correlate2d),
                                                         ("tensorflow", signal.correlate2d, signal.convolve2d)])
def test_kernel_conversion_matches_the_backends_arithmetic(tmp_path, backend, scipy_op, other_op):
    """Theano convolved (flipped kernel), TensorFlow cross-correlates: compare with scipy on a tiny input,
    and check that the other backend's arithmetic would have been told apart."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 5, 6, 2)).astype("float32")
    kernel = rng.normal(size=(3, 2, 3, 3)).astype("float32")  # Theano "th": (filters, in, rows, cols)
    bias = rng.normal(size=(3,)).astype("float32")
    path = str(tmp_path / "conv.h5")
    write_h5_by_hand(path, [("input_1", []),
                            ("convolution2d_1", [("convolution2d_1_W", kernel), ("convolution2d_1_b", bias)])])

    model = conv_model((5, 6, 2), 3)
    convert_legacy_weights(model, read_legacy_weights(path), backend=backend)

    def reference(op):
        return np.stack([sum(op(x[0, :, :, c], kernel[f, c], mode="same") for c in range(2)) + bias[f]
                         for f in range(3)], axis=-1)

    converted = model.predict(x, verbose=0)[0]
    np.testing.assert_allclose(converted, reference(scipy_op), atol=1e-5)
    assert np.abs(converted - reference(other_op)).max() > 0.1  # a conversion that skipped the flip would fail


def test_dense_after_flattening_a_feature_map_gets_its_rows_reordered(tmp_path):
    """Keras 1 "th" flattened (C, H, W); Keras 3 flattens (H, W, C)."""
    inputs = keras.Input((2, 3, 4))
    model = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(24, 5)).astype("float32")
    bias = rng.normal(size=(5,)).astype("float32")
    path = str(tmp_path / "dense.h5")
    write_h5_by_hand(path, [("input_1", []), ("flatten_1", []),
                            ("dense_1", [("dense_1_W", kernel), ("dense_1_b", bias)])])

    convert_legacy_weights(model, read_legacy_weights(path))
    x = random_images((2, 3, 4))
    expected = x.transpose(0, 3, 1, 2).reshape(len(x), -1) @ kernel + bias
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)

    write_legacy_weights(model, path)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["dense_1"]["dense_1_W"][()], kernel)


# --- refusals ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wrn_legacy_layers(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("legacy") / "wrn.h5")
    write_legacy_weights(randomise(tiny_wrn()), path)
    return read_legacy_weights(path)


def test_wrong_shape_names_layer_names_shapes_and_flags(wrn_legacy_layers):
    model = create_wide_residual_network((32, 32, 3), 100, N=1, k=1, verbose=0)
    with pytest.raises(UserError) as err:
        convert_legacy_weights(model, wrn_legacy_layers, model_label="WRN-10-1 for 100 classes",
                               hint="check --wrn_N/--wrn_k/--dataset")
    message = str(err.value)
    assert message.startswith("layer 17 with weights: dense_1 in the file has shapes [(64, 10), (10,)], dense")
    assert "of WRN-10-1 for 100 classes needs [(64, 100), (100,)]" in message
    assert message.endswith(": check --wrn_N/--wrn_k/--dataset")


@pytest.mark.parametrize("N, k, count", [(2, 1, 29), (1, 2, 18)])
def test_wrong_layer_count_is_refused(wrn_legacy_layers, N, k, count):
    label = f"WRN-{6 * N + 4}-{k} for 10 classes"
    with pytest.raises(UserError, match=rf"^the file has 17 layers with weights, {label} has {count}: check"):
        convert_legacy_weights(tiny_wrn(N=N, k=k), wrn_legacy_layers, model_label=label, hint="check flags")


def test_wrong_layer_kind_is_refused(wrn_legacy_layers):
    with pytest.raises(UserError, match=r"^layer 1 with weights: dense_1 in the file is a dense layer .* "
                                        r"is a convolution layer"):
        convert_legacy_weights(tiny_wrn(), wrn_legacy_layers[::-1])


def test_failed_conversion_leaves_the_model_unchanged(wrn_legacy_layers):
    model = tiny_wrn(k=2)
    before = model.get_weights()
    with pytest.raises(UserError):
        convert_legacy_weights(model, wrn_legacy_layers)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_files_that_are_not_keras1_weights_are_refused(tmp_path):
    missing = str(tmp_path / "missing.h5")
    with pytest.raises(UserError, match="no such file"):
        read_legacy_weights(missing)

    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(UserError, match="cannot be read as an HDF5 file"):
        read_legacy_weights(str(text))

    plain = str(tmp_path / "plain.h5")
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(UserError, match="not a Keras 1 weight file: it has no 'layer_names' attribute"):
        read_legacy_weights(plain)

    keras3 = str(tmp_path / "model.weights.h5")
    tiny_densenet(1).save_weights(keras3)
    with pytest.raises(UserError, match="already a Keras 3 weight file"):
        read_legacy_weights(keras3)

    dangling = str(tmp_path / "dangling.h5")
    with h5py.File(dangling, "w") as f:
        f.attrs["layer_names"] = np.array(["dense_1"], dtype="S")
    with pytest.raises(UserError, match="layer 'dense_1' is listed in 'layer_names' but has no group"):
        read_legacy_weights(dangling)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "truncated.h5"
    write_legacy_weights(tiny_wrn(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="cannot be read as an HDF5 file"):
        read_legacy_weights(str(path))


def _densenet_file(tmp_path):
    path = str(tmp_path / "DenseNet-CIFAR10-7-4-Best.h5")
    write_legacy_weights(randomise(tiny_densenet(1, img_dim=(32, 32, 3))), path)
    return path


DENSENET_FLAGS = ["--model", "dn", "--dn_depth", "7", "--dn_growth_rate", "4", "--dn_blocks", "1"]


def _first_weight(f):
    group = f[f.attrs["layer_names"][1].decode()]  # layer 0 is the input
    return group, group.attrs["weight_names"][0].decode()


@pytest.mark.parametrize("value, fragment", [(np.nan, "NaN or infinite"), (2.0 ** 62, r"magnitude 4.61e\+18")],
                         ids=["nan", "2^62"])
def test_non_finite_or_absurd_weights_are_refused_naming_the_file(tmp_path, value, fragment):
    path = _densenet_file(tmp_path)
    with h5py.File(path, "r+") as f:
        group, name = _first_weight(f)
        group[name][(0,) * group[name].ndim] = value
    with pytest.raises(UserError, match=rf"^{path} is not a usable Keras 1 weight file: the weight '{name}' "
                                        rf"holds .*{fragment}"):
        convert_weights.main([*DENSENET_FLAGS, path])
    assert not os.path.exists(path.replace(".h5", ".weights.h5"))


@pytest.mark.parametrize("breakage", ["int-weight-names", "int-layer-names", "string-weights", "huge-chunked"])
def test_malformed_keras1_files_are_one_clear_error(tmp_path, breakage):
    path = _densenet_file(tmp_path)
    with h5py.File(path, "r+") as f:
        group, name = _first_weight(f)
        if breakage == "int-weight-names":
            group.attrs["weight_names"] = np.arange(2)
            message = r"the 'weight_names' of layer .* is not a list of names"
        elif breakage == "int-layer-names":
            f.attrs["layer_names"] = 7
            message = r"'layer_names' is not a list of names"
        elif breakage == "string-weights":
            del group[name]
            group.create_dataset(name, data=np.array([b"abc", b"def"]))
            message = rf"the weight '{name}' holds \|S3 values, not numbers"
        else:  # 16 GiB described by a file of a few KB: never allocated
            del group[name]
            group.create_dataset(name, shape=(64, 64, 1024, 1024), dtype="float32", chunks=(1, 1, 256, 256),
                                 compression="gzip")
            message = rf"the weight '{name}' has shape \(64, 64, 1024, 1024\), larger than any weight of the network"
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(UserError, match=message):
        convert_weights.main([*DENSENET_FLAGS, path])
    assert not os.path.exists(path.replace(".h5", ".weights.h5"))


# --- the command line --------------------------------------------------------------------------

def test_densenet_mismatch_suggests_one_dense_block(tmp_path, capsys):
    source = randomise(tiny_densenet(1, img_dim=(32, 32, 3)))
    path = str(tmp_path / "DenseNet-CIFAR10-7-4-Best.h5")
    write_legacy_weights(source, path)
    flags = ["--model", "dn", "--dn_depth", "7", "--dn_growth_rate", "4", path]

    with pytest.raises(UserError, match=r"has 5 layers with weights, DenseNet-7-4 with 3 dense blocks for 10 "
                                        r"classes has 13: .*try --dn_blocks 1"):
        convert_weights.main(flags)

    convert_weights.main(flags[:-1] + ["--dn_blocks", "1", path])
    assert "wrote" in capsys.readouterr().out
    restored = tiny_densenet(1, img_dim=(32, 32, 3))
    restored.load_weights(str(tmp_path / "DenseNet-CIFAR10-7-4-Best.weights.h5"))
    assert_same_predictions(source, restored)


def test_quiet_conversion_prints_nothing_and_writes_the_same_file(tmp_path, capsys):
    source = randomise(tiny_densenet(1, img_dim=(32, 32, 3)))
    flags = ["--model", "dn", "--dn_depth", "7", "--dn_growth_rate", "4", "--dn_blocks", "1"]
    for name in ("quiet", "normal"):
        (tmp_path / name).mkdir()
        write_legacy_weights(source, str(tmp_path / name / "DenseNet-CIFAR10-7-4-Best.h5"))
    convert_weights.main([*flags, "--quiet", str(tmp_path / "quiet" / "DenseNet-CIFAR10-7-4-Best.h5")])
    assert capsys.readouterr().out == ""
    convert_weights.main([*flags, str(tmp_path / "normal" / "DenseNet-CIFAR10-7-4-Best.h5")])
    assert capsys.readouterr().out.startswith("wrote ")
    restored = tiny_densenet(1, img_dim=(32, 32, 3))
    restored.load_weights(str(tmp_path / "quiet" / "DenseNet-CIFAR10-7-4-Best.weights.h5"))
    assert_same_predictions(source, restored)


def test_cli_converts_every_release_file_and_refuses_to_overwrite(tmp_path):
    sources = {name: randomise(tiny_wrn(), seed=i) for i, name in enumerate(["Best", "1", "2"])}
    for name, model in sources.items():
        write_legacy_weights(model, str(tmp_path / f"WRN-CIFAR10-10-1-{name}.h5"))
    flags = ["--dataset", "cifar10", "--model", "wrn", "--wrn_N", "1", "--wrn_k", "1",
             "--weights_dir", str(tmp_path)]

    result = run_script("convert_weights.py", *flags)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("wrote")] == \
        [str(tmp_path / f"WRN-CIFAR10-10-1-{name}.weights.h5") for name in ("Best", "1", "2")]
    for name, model in sources.items():
        restored = tiny_wrn()
        restored.load_weights(str(tmp_path / f"WRN-CIFAR10-10-1-{name}.weights.h5"))
        assert_same_predictions(model, restored)

    assert_clean_failure(run_script("convert_weights.py", *flags), USER_ERROR, "already exist",
                         "pass --overwrite to replace")


def test_cli_mismatch_is_one_error_line(tmp_path, capsys):
    """In-process through run_cli (the subprocess test above covers the real entry point)."""
    write_legacy_weights(tiny_wrn(), str(tmp_path / "WRN-CIFAR100-10-1-Best.h5"))  # 10 classes, not 100
    with pytest.raises(SystemExit) as exit_info:
        run_cli(convert_weights.main, ["--dataset", "cifar100", "--wrn_N", "1", "--wrn_k", "1",
                                       "--weights_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'WRN-CIFAR100-10-1-Best.h5'}: layer 17 with weights: dense_1")
    assert lines[0].endswith("check --wrn_N/--wrn_k/--dataset")
    assert not os.path.exists(tmp_path / "WRN-CIFAR100-10-1-Best.weights.h5")


# --- exactness against the original network (Keras 1.1.1 order, Theano arithmetic) -------------

RELEASE_NETWORKS = {
    "wrn-16-4": (lambda: keras1_reference.original_wrn(N=2, k=4, nb_classes=10), "WRN-CIFAR10-16-4",
                 dict(model="wrn", wrn_N=2, wrn_k=4, dn_depth=40, dn_growth_rate=12, dn_blocks=3)),
    "densenet-40-12-1-block": (lambda: keras1_reference.original_densenet(40, 12, nb_classes=10, nb_dense_block=1),
                               "DenseNet-CIFAR10-40-12",
                               dict(model="dn", wrn_N=2, wrn_k=4, dn_depth=40, dn_growth_rate=12, dn_blocks=1)),
}


@pytest.mark.parametrize("network", sorted(RELEASE_NETWORKS))
def test_converted_file_computes_what_the_original_network_computed(tmp_path, network):
    """A Keras 1.1.1 file of the original network (its layer order, names and layouts), converted by
    convert_weights.py, gives the original's Theano outputs to float32 precision."""
    build_original, prefix, model_flags = RELEASE_NETWORKS[network]
    images = np.random.default_rng(7).uniform(0, 1, (4, 3, 32, 32)).astype("float32")  # NCHW, as Theano
    output = build_original()
    order = keras1_reference.fill_weights(output, images)
    keras1_reference.write_keras1_file(str(tmp_path / f"{prefix}-Best.h5"), order)
    if network.startswith("wrn"):
        names = [layer.name for layer in order]
        # the first block's 1x1 shortcut is created before its convolutions but saved after its second BN
        assert names.index("convolution2d_2") > names.index("batchnormalization_3")

    flags = [f"--{key}={value}" for key, value in model_flags.items()]
    convert_weights.main(["--dataset", "cifar10", *flags, "--weights_dir", str(tmp_path)])
    model = build_model(ModelConfig(**model_flags), 10)
    model.load_weights(str(tmp_path / f"{prefix}-Best.weights.h5"))
    # the original's ensemble weights come with the release prefix it published (WRN-16-4 only)
    assert (tmp_path / f"Ensemble-weights-{prefix}.json").exists() == network.startswith("wrn")

    ours = model.predict(images.transpose(0, 2, 3, 1), verbose=0)
    expected = keras1_reference.forward(output, images)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("script", ["convert_weights.py", "download_weights.py"])
def test_the_release_scripts_take_only_the_cifar_datasets(tmp_path, script):
    # The demo's digits have no release weights and no Keras 1 files: a usage error, before any network.
    result = run_script(script, "--dataset", "digits", "--weights_dir", tmp_path / "w")
    assert result.returncode == USER_ERROR
    assert "--dataset: invalid choice: 'digits'" in result.stderr
    assert not (tmp_path / "w").exists()


def test_a_missing_weights_folder_says_where_the_files_go(tmp_path):
    result = run_script("convert_weights.py", "--weights_dir", tmp_path / "weights")
    assert_clean_failure(result, USER_ERROR, "is not a folder: create it and put the original's .h5 files there")
