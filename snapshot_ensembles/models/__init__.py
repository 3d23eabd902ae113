"""The original suite's networks, rebuilt on Keras 3, and the paper's CIFAR ResNet and pre-activation WRN."""

from snapshot_ensembles.models.dense_net import create_dense_net
from snapshot_ensembles.models.pre_activation_wrn import create_pre_activation_wrn
from snapshot_ensembles.models.resnet import create_resnet
from snapshot_ensembles.models.wide_residual_net import create_wide_residual_network

__all__ = ["create_dense_net", "create_pre_activation_wrn", "create_resnet", "create_wide_residual_network"]
