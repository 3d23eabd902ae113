"""benchmarks/profile_step.py: our step's profile reads back as op types whose times add up to the step."""

import collections
import os
import sys
from types import SimpleNamespace

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import profile_step  # noqa: E402
from snapshot_ensembles.config import CycleConfig, ModelConfig, TrainConfig, TrainingConfig  # noqa: E402


def test_our_step_profile_is_op_types_that_add_up_to_the_step(monkeypatch):
    monkeypatch.setitem(profile_step.BATCH, "wrn", 8)
    config = TrainConfig(model=ModelConfig("wrn", wrn_N=1, wrn_k=1), cycles=CycleConfig(M=1, nb_epoch=1),
                         training=TrainingConfig(batch_size=8, deterministic=False)).resolved()
    options = SimpleNamespace(model="wrn", bf16=False, deterministic=False, steps=2)
    rows = collections.Counter()
    step = profile_step.ours(options, config, rows)
    assert "_MklNativeFusedBatchNormGradV3" in rows or "FusedBatchNormGradV3" in rows  # the fast mode's kernel
    assert not set(rows) & {"Run", "Process"} and not any(op.startswith("__inference") for op in rows)
    # One inter-op thread where the process can still choose it; two ops may overlap where it cannot.
    assert 0.3 * step * 1e3 < sum(rows.values()) < 2.5 * step * 1e3
