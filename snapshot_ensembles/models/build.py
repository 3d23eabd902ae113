"""Building the networks of snapshot_ensembles.models from a config.ModelConfig (training and prediction)."""

from snapshot_ensembles import output
from snapshot_ensembles.config import recipes
from snapshot_ensembles.config.naming import DATASETS

INPUT_SHAPE = (32, 32, 3)
DEFAULT_DROPOUT = recipes.ORIGINAL["dropout"]  # of the built network when no dropout is given (prediction)


def accelerator_present():
    """Whether the Keras backend computes on a GPU (float16 there; bfloat16 suits CPUs)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() in ("gpu", "cuda", "rocm")
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (x86 `flags`, Arm `Features` in /proc/cpuinfo); None when unreadable."""
    try:
        with open(cpuinfo) as fh:
            fields = [line.split(":", 1) for line in fh]
    except OSError:
        return None
    names = ("flags", "Features")
    return {flag for name, *values in fields if name.strip() in names for flag in values[0].split()}


def cpu_has_native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """True/False from the CPU's feature flags (x86 avx512_bf16 / amx_bf16, Arm bf16); None if unknown."""
    flags = cpu_flags(cpuinfo)
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) if flags else None


def set_precision(mixed):
    """Set Keras's global dtype policy before the model is built; returns the policy's name.

    Mixed precision computes in float16 on a GPU (with loss scaling) and in bfloat16 on a CPU (float32's
    exponent range: none needed); variables and the softmax layer stay float32, so snapshots load as usual.
    """
    import keras

    on_gpu = mixed and accelerator_present()
    policy = ("mixed_float16" if on_gpu else "mixed_bfloat16") if mixed else "float32"
    if mixed and not on_gpu and cpu_has_native_bfloat16() is False:
        # bfloat16 emulated on AVX2 is many times slower than float32 (docs/performance.md).
        output.always("warning: --mixed_precision on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 / bf16 "
                      "flag in /proc/cpuinfo): TensorFlow emulates it and training is much SLOWER than float32; "
                      "drop the flag on this machine")
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def build_model(model_config, nb_classes, dropout=None, bn_momentum=None, weight_decay=None,
                input_shape=INPUT_SHAPE, verbose=0, fused_batch_norm=False):
    """The network that `model_config` (a config.ModelConfig) describes (the original's if no variant is set).

    Training gives `bn_momentum` (every BatchNormalization's) and `weight_decay`: weight_decay / 2 x sum(w^2)
    on every trainable weight, the paper's Torch SGD's gradient weight_decay x w, in place of the builder's
    penalties (the DenseNet's L2(1e-4) is weight_decay 2e-4). `fused_batch_norm`: models.batch_norm's fused
    layers, for fast training.
    """
    import keras

    from snapshot_ensembles.models import (create_dense_net, create_pre_activation_wrn, create_resnet,
                                           create_wide_residual_network)
    from snapshot_ensembles.models.batch_norm import with_fused_batch_norm

    config = model_config
    if dropout is None:
        dropout = DEFAULT_DROPOUT[config.model]
    if config.pre_activation_wrn:
        model = create_pre_activation_wrn(input_shape, nb_classes=nb_classes, N=config.wrn_N, k=config.wrn_k,
                                          dropout=dropout, verbose=verbose)
    elif config.model == "wrn":
        model = create_wide_residual_network(input_shape, nb_classes=nb_classes, N=config.wrn_N, k=config.wrn_k,
                                             dropout=dropout, verbose=verbose)
    elif config.model == "resnet":
        model = create_resnet(input_shape, nb_classes=nb_classes, depth=config.resnet_depth, verbose=verbose)
    else:
        model = create_dense_net(nb_classes, input_shape, depth=config.dn_depth, nb_dense_block=config.dn_blocks,
                                 growth_rate=config.dn_growth_rate, dropout_rate=dropout or None, verbose=verbose,
                                 torch_init=config.variant == "paper")
    if fused_batch_norm:
        model = with_fused_batch_norm(model)  # first: the copy's variables get the momentum and penalties
    if bn_momentum is not None:
        for layer in batch_norm_layers(model):
            layer.momentum = float(bn_momentum)
    if weight_decay is not None:
        for variable in model.trainable_variables:
            variable.regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    return model


def batch_norm_layers(model):
    """Every BatchNormalization layer of `model`, nested models included."""
    import keras

    def all_layers(layer):
        for sublayer in getattr(layer, "layers", ()):
            yield sublayer
            yield from all_layers(sublayer)

    return [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def nb_classes_of(dataset):
    return DATASETS[dataset][1]
