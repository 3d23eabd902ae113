"""Re-exports snapshot_ensembles.models.resnet (the original suite's module path)."""

from snapshot_ensembles.models.resnet import *  # noqa: F401,F403
