import pytest

from models import create_dense_net, create_wide_residual_network


def test_wrn_16_4_parameter_count_matches_the_original():
    model = create_wide_residual_network((32, 32, 3), nb_classes=10, N=2, k=4, verbose=0)
    assert model.count_params() == 2_754_762
    assert model.output_shape == (None, 10)


def test_wrn_projection_only_where_widths_differ():
    model = create_wide_residual_network((32, 32, 3), nb_classes=100, N=1, k=1, verbose=0)
    kernels = [layer.kernel.shape for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    one_by_one = [shape for shape in kernels if shape[0] == 1]
    # k=1: group 1 keeps 16 channels (no projection); groups 2 and 3 widen to 32 and 64.
    assert [tuple(s) for s in one_by_one] == [(1, 1, 16, 32), (1, 1, 32, 64)]
    assert model.output_shape == (None, 100)


def test_densenet_40_12_is_the_papers_one_million_parameter_network():
    model = create_dense_net(10, (32, 32, 3), depth=40, growth_rate=12, verbose=0)
    assert 1_000_000 < model.count_params() < 1_100_000
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert all(not conv.use_bias for conv in convs)
    assert len(convs) == 1 + 3 * 12 + 2  # initial conv, 12 layers per block, 2 transitions


def test_densenet_single_block_reproduces_the_original_scripts():
    model = create_dense_net(10, (32, 32, 3), depth=40, nb_dense_block=1, verbose=0)
    assert sum(layer.__class__.__name__ == "Conv2D" for layer in model.layers) == 13


@pytest.mark.parametrize("depth", [39, 41, 4, 0])
def test_densenet_refuses_depth_not_3n_plus_4(depth):
    with pytest.raises(ValueError, match="3n\\+4"):
        create_dense_net(10, (32, 32, 3), depth=depth, verbose=0)


@pytest.mark.parametrize("model_flags", [dict(model="wrn", wrn_N=1, wrn_k=1),
                                         dict(model="dn", dn_depth=7, dn_growth_rate=4, dn_blocks=1)])
def test_bn_momentum_sets_how_fast_the_moving_statistics_follow_training(model_flags):

    import keras
    import numpy as np

    from snapshot_ensembles.config import ModelConfig
    from snapshot_ensembles.models.build import batch_norm_layers, build_model

    images = np.random.default_rng(0).random((8, 32, 32, 3)).astype("float32")
    moving_means = {}
    for momentum in (0.99, 0.5, None):  # None: the flag absent (prediction), Keras's default stays
        keras.utils.set_random_seed(0)
        model = build_model(ModelConfig(**model_flags), 10, dropout=0.0, bn_momentum=momentum)
        layers = batch_norm_layers(model)
        assert len(layers) >= 2 and {layer.momentum for layer in layers} == {momentum or 0.99}
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        model.fit(images, np.zeros(8), batch_size=8, epochs=1, verbose=0)  # one step, weights unchanged
        moving_means[momentum] = np.asarray(layers[0].moving_mean)
    # From zero, one step moves the moving mean to (1 - momentum) x the batch mean.
    np.testing.assert_allclose(moving_means[0.5], moving_means[0.99] * 50, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(moving_means[None], moving_means[0.99])
    assert np.abs(moving_means[0.5]).max() > 1e-3


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("channels", [7, 16])  # bfloat16: a float32 kernel, then a bfloat16 one
def test_fused_batch_normalization_trains_as_keras_does(policy, channels, monkeypatch):
    """Same outputs, gradients and moving statistics as Keras's BatchNormalization, to rounding."""
    import keras
    import numpy as np
    import tensorflow as tf

    from snapshot_ensembles.models.batch_norm import FusedBatchNormalization, batch_normalization

    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(2.0, 3.0, size=(8, 5, 5, channels)), "float32")
    loss_weights = tf.constant(rng.normal(size=(8, 5, 5, channels)), "float32")
    fused_kernel = tf.raw_ops.FusedBatchNormV3
    calls = []
    monkeypatch.setattr(tf.raw_ops, "FusedBatchNormV3", lambda **kw: calls.append(kw["x"].dtype) or fused_kernel(**kw))
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        plain = batch_normalization(momentum=0.9)
        fused = FusedBatchNormalization.from_config(plain.get_config())
        results = []
        for layer in (plain, fused):
            layer.build(images.shape)
            layer.gamma.assign(np.linspace(0.5, 2.0, channels))
            layer.beta.assign(np.linspace(-1.0, 1.0, channels))
            with tf.GradientTape() as tape:
                tape.watch(images)
                outputs = layer(tf.cast(images, layer.compute_dtype), training=True)
                loss = tf.reduce_sum(tf.cast(outputs, "float32") * loss_weights)
            gradients = tape.gradient(loss, [images, layer.gamma, layer.beta])
            results.append([tf.cast(outputs, "float32"), *gradients, layer.moving_mean, layer.moving_variance])
            assert outputs.dtype == layer.compute_dtype
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    bfloat16_kernel = policy == "mixed_bfloat16" and channels % 16 == 0
    assert calls == [tf.bfloat16 if bfloat16_kernel else tf.float32]  # the fused layer did run the kernel
    # bfloat16 keeps 8 significant bits: float32 alone is tight enough to see the variance correction.
    tolerance = 1e-4 if policy == "float32" else 2 ** -7
    for expected, actual in zip(*results):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tolerance, atol=tolerance)


def test_no_deterministic_training_network_has_fused_batch_norm_and_the_same_weight_files(tmp_path):
    import keras
    import numpy as np

    from snapshot_ensembles import training
    from snapshot_ensembles.config import ModelConfig, TrainConfig, TrainingConfig
    from snapshot_ensembles.models.batch_norm import FusedBatchNormalization
    from snapshot_ensembles.models.build import batch_norm_layers, build_model

    model_config = ModelConfig("wrn", wrn_N=1, wrn_k=1)
    networks = {}
    for deterministic in (True, False):
        config = TrainConfig(model=model_config, training=TrainingConfig(deterministic=deterministic)).resolved()
        networks[deterministic] = training.compile_model(training.build_training_model(config, 10), config)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in batch_norm_layers(networks[True]))
    fused_layers = batch_norm_layers(networks[False])
    assert fused_layers and all(isinstance(layer, FusedBatchNormalization) for layer in fused_layers)
    assert [layer.momentum for layer in fused_layers] == [layer.momentum for layer in batch_norm_layers(networks[True])]

    images = np.random.default_rng(0).random((16, 32, 32, 3)).astype("float32")
    networks[False].fit(images, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "fused.weights.h5")
    networks[False].save_weights(path)
    plain = build_model(model_config, 10)
    plain.load_weights(path)  # a snapshot of a --no_deterministic run predicts in the plain network
    expected = networks[False].predict(images, verbose=0)
    np.testing.assert_allclose(plain.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    networks[False].save(tmp_path / "fused.keras")  # the model training.train() returns saves whole, too
    reloaded = keras.models.load_model(tmp_path / "fused.keras")
    assert all(isinstance(layer, FusedBatchNormalization) for layer in batch_norm_layers(reloaded))
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def channels_first_setting():
    """keras.json's `"image_data_format": "channels_first"` (Keras 1 "th" users), for the test's duration."""
    import keras

    saved = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    yield
    keras.config.set_image_data_format(saved)


@pytest.mark.parametrize("model_flags", [dict(model="wrn", wrn_N=1, wrn_k=1),
                                         dict(model="wrn", wrn_N=1, wrn_k=1, variant="paper"),
                                         dict(model="dn", dn_depth=7, dn_growth_rate=2),
                                         dict(model="resnet", resnet_depth=8)])
def test_networks_take_channels_last_images_whatever_keras_json_says(channels_first_setting, model_flags):
    import keras
    import numpy as np

    from snapshot_ensembles.config import ModelConfig
    from snapshot_ensembles.models.build import build_model

    model = build_model(ModelConfig(**model_flags), 10)
    first_convolution = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert first_convolution.kernel.shape[2] == 3  # the RGB channels, not the images' 32 columns
    assert model.output_shape == (None, 10)
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, 10)
    assert keras.config.image_data_format() == "channels_first"  # the user's setting is left as it was
