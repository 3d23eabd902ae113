"""The paper's networks (--variant paper, --recipe paper): the pre-activation WRN against its published
definition, the prefixes that keep two networks apart, the run record, and the warnings of a run that
lags BatchNormalization's statistics or diverges."""


import numpy as np
import pytest

from conftest import predict_argv, train_config, train_from_flags
from snapshot_ensembles import training
from snapshot_ensembles.config import ModelConfig
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.models import create_pre_activation_wrn, create_resnet
from snapshot_ensembles.training import run_state
from snapshot_ensembles.training.run_folder import RunFolder


def input_layers(layer):
    """The layers whose outputs `layer` takes, in call order."""
    return [tensor._keras_history[0] for tensor in layer._inbound_nodes[0].input_tensors]


def kind(layer):
    name = type(layer).__name__
    if name == "Conv2D":
        return f"conv{layer.kernel_size[0]}x{layer.kernel_size[1]}/{layer.strides[0]}:{layer.filters}"
    if name == "Activation":
        return layer.get_config()["activation"]
    return name


def chain(layer, length):
    """`layer` and the `length - 1` layers before it, following the first input; the last one first."""
    layers = [layer]
    while len(layers) < length:
        layers.append(input_layers(layers[-1])[0])
    return layers


def expected_parameters(N, k, nb_classes):
    """wide-resnet.lua's weights, counted by hand: bias-free convolutions, 4 values per BatchNormalization
    channel (scale, offset and the two moving statistics that Keras counts too), the linear layer."""
    total, channels = 3 * 3 * 3 * 16, 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(N):
            total += 4 * channels + 9 * channels * width + 4 * width + 9 * width * width
            total += channels * width if channels != width else 0  # the 1x1 projection
            channels = width
    return total + 4 * channels + channels * nb_classes + nb_classes


@pytest.mark.parametrize("N,k,nb_classes", [(1, 1, 10), (2, 2, 10), (5, 4, 100)])
def test_pre_activation_wrn_has_the_parameters_of_the_published_definition(N, k, nb_classes):
    model = create_pre_activation_wrn((32, 32, 3), nb_classes, N=N, k=k, verbose=0)
    assert model.count_params() == expected_parameters(N, k, nb_classes)


def test_pre_activation_wrn_28_10_has_the_published_36_5_million_parameters():
    """Zagoruyko & Komodakis, Table: WRN-28-10, 36.5M (trainable: without the moving statistics)."""
    model = create_pre_activation_wrn((32, 32, 3), 10, N=4, k=10, verbose=0)
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert round(trainable / 1e6, 1) == 36.5


@pytest.mark.parametrize("N,k", [(1, 1), (2, 2)])
def test_pre_activation_wrn_layer_order_is_wide_resnet_lua(N, k):
    """BN-ReLU-conv blocks, strided 3x3 convolutions and 1x1 projections on the normalised input where the
    shape changes, identity shortcuts elsewhere, a final BN-ReLU before the pooling, no max-pooling."""
    model = create_pre_activation_wrn((32, 32, 3), 10, N=N, k=k, verbose=0)
    assert not [layer for layer in model.layers if "Pooling" in type(layer).__name__ and "Global" not in
                type(layer).__name__]
    dense = model.layers[-1]
    head = chain(dense, 5)
    assert [kind(layer) for layer in head] == ["Dense", "GlobalAveragePooling2D", "relu", "BatchNormalization", "Add"]
    block_output, blocks = head[-1], []
    while type(block_output).__name__ == "Add":
        blocks.append(block_output)
        residual, shortcut = input_layers(block_output)
        # the residual branch: BN-ReLU-conv3x3-BN-ReLU-conv3x3, the first convolution carrying the stride
        first_conv = chain(residual, 4)[-1]
        padding = input_layers(first_conv)[0]
        before_conv = input_layers(padding)[0] if type(padding).__name__ == "ZeroPadding2D" else padding
        relu, norm = before_conv, input_layers(before_conv)[0]
        assert [kind(layer) for layer in (relu, norm)] == ["relu", "BatchNormalization"]
        stride = first_conv.strides[0]
        width = residual.filters
        assert [kind(layer) for layer in chain(residual, 4)] == [f"conv3x3/1:{width}", "relu", "BatchNormalization",
                                                                 f"conv3x3/{stride}:{width}"]
        assert (type(padding).__name__ == "ZeroPadding2D") == (stride == 2)
        block_input = input_layers(norm)[0]
        if shortcut is not block_input:  # the projection reads the block's normalised input
            assert kind(shortcut) == f"conv1x1/{stride}:{width}"
            assert input_layers(shortcut)[0] is relu
        else:
            assert shortcut is block_input and stride == 1
        block_output = block_input
    assert kind(block_output) == "conv3x3/1:16" and type(input_layers(block_output)[0]).__name__ == "InputLayer"
    blocks.reverse()
    widths = [input_layers(block)[0].filters for block in blocks]
    assert widths == [16 * k] * N + [32 * k] * N + [64 * k] * N
    projected = [kind(input_layers(block)[1]).startswith("conv1x1") for block in blocks]
    assert projected == [k != 1] + [False] * (N - 1) + ([True] + [False] * (N - 1)) * 2


def test_pre_activation_wrn_initialisation_is_msrinit():
    """Bias-free convolutions with normal(0, sqrt(2 / (3 x 3 x output channels))); a zero linear bias."""
    import keras

    keras.utils.set_random_seed(0)
    model = create_pre_activation_wrn((32, 32, 3), 10, N=1, k=4, verbose=0)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert all(not conv.use_bias for conv in convs)
    widest = max(convs, key=lambda conv: int(np.prod(conv.kernel.shape)))  # 3x3x256x256
    kernel = np.asarray(widest.kernel)
    fan_out = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
    assert abs(kernel.std() / np.sqrt(2.0 / fan_out) - 1) < 0.02
    assert not np.asarray(model.layers[-1].bias).any()


def test_resnet_strided_convolution_is_centred_on_the_pixels_its_shortcut_keeps():
    """Torch pads one pixel on every side: output pixel (0, 0) of a stride-2 3x3 convolution is the
    weighted sum of input pixels -1..1, centred on pixel 0, which the type-A shortcut keeps."""
    model = create_resnet((32, 32, 3), 10, depth=8, verbose=0)
    strided = [layer for layer in model.layers if type(layer).__name__ == "Conv2D" and layer.strides[0] == 2][0]
    kernel = np.zeros(strided.kernel.shape, "float32")
    kernel[1, 1, 0, 0] = 1.0  # the centre tap of channel 0 only
    strided.kernel.assign(kernel)
    source = input_layers(strided)[0]
    source = input_layers(source)[0] if type(source).__name__ == "ZeroPadding2D" else source
    import keras

    probe = keras.Model(source.output, strided.output)
    images = np.random.default_rng(0).random((1, 32, 32, source.output.shape[-1])).astype("float32")
    np.testing.assert_allclose(np.asarray(probe(images))[0, :, :, 0], images[0, ::2, ::2, 0], rtol=1e-6)


@pytest.mark.parametrize("argv,prefix", [
    ([], "WRN-CIFAR10-16-4"),  # the original's, its release weights' name
    (["--recipe", "paper"], "PreActWRN-CIFAR10-16-4"),
    (["--recipe", "paper", "--wrn_N", "5"], "PreActWRN-CIFAR10-34-4"),  # the paper's Wide-ResNet-32
    (["--recipe", "paper", "--variant", "original"], "WRN-CIFAR10-16-4"),
    (["--variant", "paper"], "PreActWRN-CIFAR10-16-4"),
    (["--model", "dn", "--dn_blocks", "1"], "DenseNet-CIFAR10-40-12"),  # the original's
    (["--model", "dn"], "DenseNet-CIFAR10-40-12-3blocks"),
    (["--model", "dn", "--recipe", "paper"], "DenseNet-CIFAR10-40-12-3blocks"),  # other initialisation only
    (["--model", "resnet", "--recipe", "paper"], "ResNet-CIFAR10-110"),
])
def test_each_network_has_its_own_prefix(argv, prefix):
    assert train_config(*argv).prefix == prefix


@pytest.mark.parametrize("model,variant", [("wrn", "original"), ("wrn", "paper"), ("dn", "original"),
                                           ("dn", "paper"), ("resnet", "paper")])
def test_the_recipe_picks_the_network_and_the_variant_flag_overrides_it(model, variant):
    recipe = "paper" if model == "resnet" else variant
    assert train_config("--model", model, "--recipe", recipe).model.variant == variant
    other = {"original": "paper", "paper": "original"}[recipe]
    if model != "resnet":
        assert train_config("--model", model, "--recipe", other, "--variant", variant).model.variant == variant


def test_the_resnet_has_no_original_variant():
    with pytest.raises(UserError, match="--model resnet exists only as the paper's network.*--variant original"):
        train_config("--model", "resnet", "--variant", "original")


def test_a_densenet_of_the_other_variant_is_another_run(tmp_path):
    """The variant shares the DenseNet's prefix (same weights), so resuming compares it."""
    paper = run_state.run_flags(train_config("--model", "dn", "--recipe", "paper").to_dict())
    original = run_state.run_flags(train_config("--model", "dn", "--recipe", "paper", "--variant",
                                                "original").to_dict())
    with pytest.raises(UserError, match="--variant paper \\(now original\\)"):
        run_state.check_same_run(paper, original, "a run", str(tmp_path))


@pytest.mark.parametrize("model", ["wrn", "dn", "resnet"])
def test_runs_saved_before_variants_are_refused_naming_no_resume(tmp_path, model):
    """A record without --variant (and --bn_momentum), of a version before them, is not resumed: the
    error names what it lacks and --no_resume (runs of earlier versions start over)."""
    today = train_config("--model", model)
    saved = {name: value for name, value in today.to_dict().items() if name not in ("variant", "bn_momentum")}
    with pytest.raises(UserError, match=r"(?s)--variant.*--no_resume"):
        run_state.check_same_run(run_state.run_flags(saved), run_state.run_flags(today.to_dict()), "a run",
                                 str(tmp_path))


def test_paper_run_records_its_network_and_predicts_with_it(cifar10_dir, tmp_path, capsys):
    """A --recipe paper run trains the pre-activation WRN, records it, and prediction without --variant
    finds and rebuilds it; the lagging-statistics warning comes once at the start and is recorded."""
    data_dir, sha = cifar10_dir
    weights = tmp_path / "w"
    common = ["--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", weights]
    model, _ = train_from_flags("cifar10", ["--recipe", "paper", "--wrn_N", 1, "--wrn_k", 1, "--nb_epoch", 1,
                                            "--M", 1, "--alpha_zero", 0.01, "--bn_momentum", 0.99, *common])
    printed = capsys.readouterr().out
    assert model.name == "preact_wrn_10_1"
    folder = RunFolder(str(weights), "PreActWRN-CIFAR10-10-1")
    record = folder.read_record()
    assert record["prefix"] == "PreActWRN-CIFAR10-10-1"
    assert record["network"].startswith("pre-activation WRN-10-1")
    assert record["args"]["variant"] == "paper" and record["args"]["bn_momentum"] == 0.99
    # 200 training images, batch 64: 4 steps, against a time constant of 100
    assert record["lagging_bn_statistics"]["suggested_bn_momentum"] < 0.5
    assert printed.count("warning: an epoch has 4 steps") == 1
    assert "warning: the Best checkpoint was chosen on lagging BatchNormalization statistics" in printed
    assert not RunFolder(str(weights), "WRN-CIFAR10-10-1").member_files()

    summary = predict_argv("cifar10", ["--wrn_N", "1", "--wrn_k", "1", "--optimize", "-1", *map(str, common)])
    assert summary["prefix"] == "PreActWRN-CIFAR10-10-1" and len(summary["member_accuracy"]) == 2
    assert "note: the training run of PreActWRN-CIFAR10-10-1 lagged BatchNormalization's" in capsys.readouterr().out
    with pytest.raises(UserError, match="missing ensemble member files: .*WRN-CIFAR10-10-1-Best"):
        predict_argv("cifar10", ["--wrn_N", "1", "--wrn_k", "1", "--variant", "original", *map(str, common)])


def test_prediction_asks_which_wrn_when_the_folder_holds_both(tmp_path):
    from snapshot_ensembles.models.build import build_model

    for variant in ("original", "paper"):
        network = ModelConfig("wrn", wrn_N=1, wrn_k=1, variant=variant)
        build_model(network, 10).save_weights(RunFolder(str(tmp_path), network.prefix("cifar10")).best)
    with pytest.raises(UserError, match="holds weight files of two networks, WRN-CIFAR10-10-1 .* and "
                                        "PreActWRN-CIFAR10-10-1 .*--variant original or --variant paper"):
        predict_argv("cifar10", ["--wrn_N", "1", "--wrn_k", "1", "--weights_dir", str(tmp_path)])


@pytest.mark.parametrize("bn_momentum,steps,lags", [(0.99, 37, True), (0.99, 391, False), (0.9, 73, False),
                                                    (0.9, 5, True), (0.99, 160, True), (0.99, 161, False)])
def test_lagging_statistics_when_more_than_a_fifth_predates_the_epoch(bn_momentum, steps, lags):
    lag = training.lagging_statistics(bn_momentum, steps)
    assert (lag is not None) == lags
    if lags:
        stale, suggested = lag
        assert stale == pytest.approx(bn_momentum ** steps)
        assert suggested ** steps <= training.STALE_STATISTICS_TARGET < (suggested + 0.01) ** steps


def test_the_recipes_bn_momentum_keeps_up_with_an_epoch_of_cifar():
    """The original's 0.99 at 391 steps (batch 128) and the paper's 0.9 (Torch's) at 782 (batch 64)."""
    for argv, steps in (([], 50000 // 128 + 1), (["--recipe", "paper"], 50000 // 64 + 1)):
        assert training.lagging_statistics(train_config(*argv).training.bn_momentum, steps) is None
    assert train_config("--recipe", "paper").training.bn_momentum == 0.9


@pytest.mark.parametrize("argv,named,not_named", [
    (["--momentum", "0.9"], ["SGD momentum 0.9 on the original's post-activation WRN", "--variant paper",
                             "--momentum 0", "--alpha_zero 0.01"], []),
    (["--recipe", "paper"], ["the peak learning rate 0.1", "--alpha_zero 0.01"], ["momentum"]),
    (["--recipe", "paper", "--variant", "original"], ["SGD momentum 0.9", "--variant paper"], []),
    ([], ["--alpha_zero 0.01"], ["momentum"]),  # plain SGD: momentum is no cause
    (["--model", "dn", "--recipe", "paper"], ["--alpha_zero 0.01"], ["momentum"]),
])
def test_divergence_names_the_likely_causes_of_the_run(argv, named, not_named):
    message = "; ".join(training.divergence_causes(train_config(*argv)))
    for fragment in named:
        assert fragment in message
    for fragment in not_named:
        assert fragment not in message
