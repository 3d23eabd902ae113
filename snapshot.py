"""The original suite's `snapshot.py`: `from snapshot import SnapshotCallbackBuilder` works as in its README.

The callbacks live in snapshot_ensembles.training.callbacks; this module re-exports them.
"""

from snapshot_ensembles.config.schedule import SCHEDULE_MODES  # noqa: F401
from snapshot_ensembles.training.callbacks import *  # noqa: F401,F403
from snapshot_ensembles.training.callbacks import VALIDATION_ACCURACY_KEYS, __all__  # noqa: F401
