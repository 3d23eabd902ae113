"""Shared logic behind the Snapshot Ensembles scripts (data, training, prediction, ensembles), and
`SnapshotEnsemble`, the ensemble of any Keras classifier's snapshots:

    from snapshot_ensembles import SnapshotEnsemble

It is imported on first use, so that the command-line tools answer --help before Keras loads.
"""

# TensorFlow's log level, set before anything imports TensorFlow (backend_start owns the backend's start).
from snapshot_ensembles import backend_start  # noqa: F401

__all__ = ["SnapshotEnsemble"]


def __getattr__(name):
    if name != "SnapshotEnsemble":
        raise AttributeError(f"module 'snapshot_ensembles' has no attribute {name!r}")
    from snapshot_ensembles.ensemble.snapshot_ensemble import SnapshotEnsemble

    return SnapshotEnsemble
