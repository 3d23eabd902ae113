"""RunFolder: every file of one network's run in a weights folder, by name, and its run record.

The one place that spells a run's file names (the table below) and reads and writes `{prefix}-run.json`.
"""

import os
import re

from snapshot_ensembles.errors import UserError
from snapshot_ensembles.files import load_json_object, write_json

RUN_STATUSES = ("running", "complete")
# Every run file's name, `{prefix}` and `{number}` standing for any run's: the snapshots, the original's Keras 1
# files and (added by `_named`) the rest.
NAME_PATTERNS = ["{prefix}-{number}.weights.h5", "{prefix}-{number}.h5", "{prefix}-Best.h5"]


def _named(pattern):
    """A property: the path of the file `pattern` names, its `{prefix}` the run's."""
    NAME_PATTERNS.append(pattern)
    return property(lambda folder: os.path.join(folder.weights_dir, pattern.format(prefix=folder.prefix)))


def is_another_runs_file(path):
    """Whether `path` is named as a file of a run (a record, history, plot...) whose weights or records lie beside
    it; a user's own `plots/x-ensemble.png`, with no run of `x` there, is not."""
    folder, name = os.path.split(os.path.abspath(path))
    for pattern in NAME_PATTERNS:
        match = re.fullmatch(re.escape(pattern).replace(r"\{prefix\}", "(.+)").replace(r"\{number\}", r"\d+"), name)
        if match and match.groups():
            run = RunFolder(folder, match[1])
            beside = [*run.member_files().values(), *run.keras1_files().values(), run.run_record, run.release_record,
                      run.state, run.history]
            if any(os.path.isfile(other) and other != os.path.join(folder, name) for other in beside):
                return True
    return False


class RunFolder:
    """The files of the run of `prefix` in `weights_dir`; paths only, nothing is created."""

    best = _named("{prefix}-Best.weights.h5")  # the best-validation checkpoint (ensemble member "Best")
    state = _named("{prefix}-state.weights.h5")  # the unfinished run's state (removed when it completes)
    run_record = _named("{prefix}-run.json")  # flags, splits, standardisation, status
    history = _named("{prefix}-training.json")  # the history of every epoch
    ensemble_json = _named("Ensemble-weights-{prefix}.json")  # fitted ensemble weights and temperatures
    legacy_ensemble_json = _named("Ensemble weights {prefix}.json")  # the original project's name style
    plot = _named("{prefix}-ensemble.png")  # predict's --plot default
    release_record = _named("{prefix}-release.json")  # what download_weights.py installed
    lock = _named(".{prefix}.lock")  # held by the training process
    prediction_cache = _named(".prediction-cache")  # member probabilities, shared by every run of the folder

    def __init__(self, weights_dir, prefix):
        self.weights_dir = weights_dir
        self.prefix = prefix

    def snapshot(self, index):
        """`{prefix}-{1..M}.weights.h5`, the snapshots."""
        return os.path.join(self.weights_dir, f"{self.prefix}-{index}.weights.h5")

    def member(self, key):
        """"Best" or a snapshot number."""
        return self.best if key == "Best" else self.snapshot(key)

    def keras1_file(self, tag):
        """The original's release file `{prefix}-{Best,1,2,...}.h5`, before conversion."""
        return os.path.join(self.weights_dir, f"{self.prefix}-{tag}.h5")

    def _numbered_files(self, number, suffix):
        """{"Best" or number: path} of the files `{prefix}-{Best or number}{suffix}` present now."""
        pattern = re.compile(re.escape(self.prefix) + rf"-(Best|{number}){re.escape(suffix)}")
        names = os.listdir(self.weights_dir) if os.path.isdir(self.weights_dir) else []
        matches = filter(None, (pattern.fullmatch(name) for name in names))
        return {("Best" if m[1] == "Best" else int(m[1])): os.path.join(self.weights_dir, m[0]) for m in matches}

    def member_files(self):
        """{"Best" or snapshot number: path} of the member files present now."""
        return self._numbered_files(r"[1-9]\d*", ".weights.h5")

    def keras1_files(self):
        """{"Best" or snapshot number: path} of the original's Keras 1 files present now."""
        return self._numbered_files(r"\d+", ".h5")

    def run_files(self):
        """Every file that a training run and its predictions leave here, present now."""
        paths = list(self.member_files().values())
        paths += [self.state, self.history, self.run_record, self.plot, self.ensemble_json, self.legacy_ensemble_json]
        return sorted(path for path in paths if os.path.isfile(path))

    def read_record(self, damaged=None, resumable=False):
        """The run record, {} when there is none: the one reader of `{prefix}-run.json`.

        One that cannot be read (or, with `resumable`, lacks its status and args) is {} as well, unless
        `damaged` is given: then a UserError with the message `damaged(reason)`.
        """
        if not os.path.lexists(self.run_record):
            return {}
        try:
            info = load_json_object(self.run_record)
            if resumable and not (isinstance(info.get("args"), dict) and info.get("status") in RUN_STATUSES):
                raise ValueError("not a run record with its status and args")
        except (OSError, ValueError, RecursionError) as err:
            if damaged is None:
                return {}
            raise UserError(damaged(str(err)[:200])) from None
        return info

    def write_record(self, record):
        write_json(self.run_record, record)
