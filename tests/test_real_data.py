"""benchmarks/real_data.py: every README training command, shortened, on a CIFAR archive (here a synthetic one)."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, write_archive

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

ROW = re.compile(r"^\| (.+?) \| `(.+?)` \| ([0-9.]+|-) \| ([0-9.]+|-) \| (yes|no) \| ([0-9.]+ %|-) \| \d+ \(\d+\) \|$",
                 re.MULTILINE)


def _real_data(tmp_path, *flags):
    folder = tmp_path / "data"
    _, sha = write_archive(str(folder), train_per_batch=16, test_size=20)
    report = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "real_data.py"), "--data_dir",
                           str(folder), "--data_sha256", sha, "--quick", "--json", str(report), *flags],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(report) as fh:
        return done.stdout, json.load(fh)


@pytest.mark.process  # the benchmark runs each command as its own process
def test_real_data_prints_loss_divergence_and_accuracy_per_command_with_the_cpu(tmp_path):
    out, record = _real_data(tmp_path, "--parts", "commands", "--only", "CIFAR flow 1")
    assert re.search(r"^CPU: .+; \d+ cores; flags: .+", out, re.MULTILINE)
    (row, command, first, last, diverged, accuracy), = ROW.findall(out)  # the table; progress lines are indented
    assert row == "CIFAR flow 1 (train)" and "--wrn_N 1 --wrn_k 1" in command and "--nb_epoch 2" in command
    assert diverged == "no" and float(first) > 0 and float(last) > 0 and accuracy.endswith(" %")
    (outcome,) = record["commands"]
    assert len(outcome["losses"]) == 2 and outcome["returncode"] == 0
    assert record["train_images"] == 80 and record["test_images"] == 20


def test_real_data_refuses_a_folder_without_cifar_10_and_a_used_weights_folder(tmp_path):
    script = os.path.join(REPO, "benchmarks", "real_data.py")
    done = subprocess.run([sys.executable, script, "--data_dir", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: no CIFAR-10 archive in")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep")
    done = subprocess.run([sys.executable, script, "--data_dir", str(tmp_path), "--weights_dir",
                           str(tmp_path / "used")], capture_output=True, text=True)
    assert done.returncode == 2 and "is not an empty folder" in done.stderr
    assert (tmp_path / "used" / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_real_data_runs_every_command_the_snapshot_comparison_and_the_peer(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch reference needs torch: pip install -r requirements-backends.txt")
    pytest.importorskip("jax", reason="the JAX rows need jax: pip install -r requirements-backends.txt")
    from real_data import COMMANDS

    out, record = _real_data(tmp_path, "--peer", "--seeds", "0")
    assert len(record["commands"]) == len(COMMANDS)
    assert all(outcome["returncode"] == 0 for outcome in record["commands"])
    assert set(record["snapshot"]) == {"snapshot ensemble, 3 snapshots, equal weights", "its last snapshot alone",
                                       "one cycle (single model), same epochs"}
    assert [result["recipe"] for result in record["peer"]] == ["original", "paper"]
    assert "| model | test accuracy | NLL | ECE |" in out
