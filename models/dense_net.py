"""Re-exports snapshot_ensembles.models.dense_net (the original suite's module path)."""

from snapshot_ensembles.models.dense_net import *  # noqa: F401,F403
