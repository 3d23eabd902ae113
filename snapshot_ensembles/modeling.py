"""Building the networks of snapshot_ensembles.models from a config.ModelConfig (training and prediction)."""

from snapshot_ensembles import output, recipes
from snapshot_ensembles.naming import DATASETS

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
            text = fh.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags.update(line.split(":", 1)[1].split())
    return flags


def cpu_has_native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """True/False from the CPU's feature flags (x86 avx512_bf16 / amx_bf16, Arm bf16); None if unknown."""
    flags = cpu_flags(cpuinfo)
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) if flags else None


def set_precision(mixed):
    """Set Keras's global dtype policy before the model is built; returns the policy's name.

    Mixed precision computes in float16 on a GPU (Keras then wraps the optimizer in a
    LossScaleOptimizer) and in bfloat16 on a CPU (same exponent range as float32: no loss
    scaling needed). Variables stay float32 and the softmax layer is float32 in models/, so
    snapshots load into float32 models unchanged.
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
    """The network that `model_config` (a config.ModelConfig) describes, the original's where its variant is
    unset; `bn_momentum` and `weight_decay`, when given (training), replace BatchNormalization's momentum
    and the weights' penalties;
    `fused_batch_norm` trains its BatchNormalization with TensorFlow's fused kernel (models.batch_norm)."""
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
        set_batch_norm_momentum(model, bn_momentum)
    if weight_decay is not None:
        set_weight_decay(model, weight_decay)
    return model


def set_weight_decay(model, weight_decay):
    """Penalise every trainable weight with weight_decay / 2 x sum(w^2) in the training loss; 0 removes it.

    That is the gradient weight_decay x w of the paper's Torch SGD on every parameter (BatchNormalization
    and biases included). It replaces the penalties the builder attached: the DenseNet's L2(1e-4) on
    every weight is weight_decay 2e-4, the same penalty. Before the model is first trained.
    """
    import keras

    for variable in model.trainable_variables:
        variable.regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def set_batch_norm_momentum(model, momentum):
    """Set every BatchNormalization layer's moving-average momentum; before the model is first trained.

    The moving statistics follow the last ~1/(1 - momentum) steps. With the default 0.99 that is ~100
    steps: on a small dataset (the demo's 21 steps per epoch) they still mix in the statistics of the
    high learning rates of a cycle when its snapshot is saved.
    """
    for layer in batch_norm_layers(model):
        layer.momentum = float(momentum)


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
