"""Re-exports snapshot_ensembles.models.wide_residual_net (the original suite's module path)."""

from snapshot_ensembles.models.wide_residual_net import *  # noqa: F401,F403
