"""Re-exports snapshot_ensembles.models.batch_norm (the original suite's module path)."""

from snapshot_ensembles.models.batch_norm import *  # noqa: F401,F403
