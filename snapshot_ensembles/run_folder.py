"""RunFolder: every file of one network's run in a weights folder, by name, and its run record.

The one place that spells a run's file names. A run of prefix `WRN-CIFAR10-16-4` in `weights/`:

    WRN-CIFAR10-16-4-Best.weights.h5        the best-validation checkpoint (ensemble member "Best")
    WRN-CIFAR10-16-4-{1..M}.weights.h5      the snapshots
    WRN-CIFAR10-16-4-state.weights.h5       the unfinished run's state (removed when it completes)
    WRN-CIFAR10-16-4-run.json               the run record: flags, splits, standardisation, status
    WRN-CIFAR10-16-4-training.json          the history of every epoch
    Ensemble-weights-WRN-CIFAR10-16-4.json  fitted ensemble weights and temperatures
    WRN-CIFAR10-16-4-ensemble.png           predict's --plot default
    WRN-CIFAR10-16-4-release.json           what download_weights.py installed
    WRN-CIFAR10-16-4-{Best,1..M}.h5         the original's Keras 1 files, before conversion
    .WRN-CIFAR10-16-4.lock                  held by the training process
    .prediction-cache/                      member probabilities, shared by every run of the folder
"""

import os
import re

from snapshot_ensembles.files import read_json_record, write_json


class RunFolder:
    """The files of the run of `prefix` in `weights_dir`; paths only, nothing is created."""

    def __init__(self, weights_dir, prefix):
        self.weights_dir = weights_dir
        self.prefix = prefix

    def __repr__(self):
        return f"RunFolder({self.weights_dir!r}, {self.prefix!r})"

    def _path(self, name):
        return os.path.join(self.weights_dir, name)

    @property
    def best(self):
        return self._path(f"{self.prefix}-Best.weights.h5")

    def snapshot(self, index):
        return self._path(f"{self.prefix}-{index}.weights.h5")

    def member(self, key):
        """"Best" or a snapshot number."""
        return self.best if key == "Best" else self.snapshot(key)

    @property
    def state(self):
        return self._path(f"{self.prefix}-state.weights.h5")

    @property
    def run_record(self):
        return self._path(f"{self.prefix}-run.json")

    @property
    def history(self):
        return self._path(f"{self.prefix}-training.json")

    @property
    def ensemble_json(self):
        return self._path(f"Ensemble-weights-{self.prefix}.json")

    @property
    def legacy_ensemble_json(self):
        """The original project's name style."""
        return self._path(f"Ensemble weights {self.prefix}.json")

    @property
    def plot(self):
        return self._path(f"{self.prefix}-ensemble.png")

    @property
    def release_record(self):
        return self._path(f"{self.prefix}-release.json")

    def keras1_file(self, tag):
        """The original's release file `{prefix}-{Best,1,2,...}.h5`."""
        return self._path(f"{self.prefix}-{tag}.h5")

    @property
    def lock(self):
        return self._path(f".{self.prefix}.lock")

    @property
    def prediction_cache(self):
        return self._path(".prediction-cache")

    def member_key(self, name):
        """"Best" or the snapshot number when the file name `name` is one of the run's members, else None."""
        match = re.fullmatch(re.escape(self.prefix) + r"-(Best|[1-9]\d*)\.weights\.h5", name)
        if match is None:
            return None
        return "Best" if match.group(1) == "Best" else int(match.group(1))

    def member_files(self):
        """{"Best" or snapshot number: path} of the member files present now."""
        names = os.listdir(self.weights_dir) if os.path.isdir(self.weights_dir) else []
        return {key: self._path(name) for name in names if (key := self.member_key(name)) is not None}

    def keras1_files(self):
        """{"Best" or snapshot number: path} of the original's Keras 1 files present now."""
        pattern = re.compile(re.escape(self.prefix) + r"-(Best|\d+)\.h5$")
        names = os.listdir(self.weights_dir) if os.path.isdir(self.weights_dir) else []
        return {(m.group(1) if m.group(1) == "Best" else int(m.group(1))): self._path(name)
                for name in names if (m := pattern.match(name))}

    def run_files(self):
        """Every file that a training run and its predictions leave here, present now."""
        paths = list(self.member_files().values())
        paths += [self.state, self.history, self.run_record, self.plot, self.ensemble_json, self.legacy_ensemble_json]
        return sorted(path for path in paths if os.path.isfile(path))

    def read_record(self):
        """The run record ({} when there is none or it is unreadable)."""
        return read_json_record(self.run_record)

    def write_record(self, record):
        write_json(self.run_record, record)
