"""The networks: the original suite's WRN and DenseNet rebuilt on Keras 3, and the paper's CIFAR ResNet and
pre-activation WRN; `build` makes them from a configuration. The builders load on first use, so that importing
the package's flows starts no Keras."""

import importlib

_BUILDERS = {"create_dense_net": "dense_net", "create_pre_activation_wrn": "pre_activation_wrn",
             "create_resnet": "resnet", "create_wide_residual_network": "wide_residual_net"}
__all__ = list(_BUILDERS)


def __getattr__(name):
    if name in _BUILDERS:
        return getattr(importlib.import_module(f"{__name__}.{_BUILDERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
