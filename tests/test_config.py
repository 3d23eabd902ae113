"""The typed configuration: built by the command line only, saved as the run record's flags, read back."""

import dataclasses
import json
import os
import re

import pytest

from conftest import REPO, run_script, train_config
from snapshot_ensembles import cli
from snapshot_ensembles import config as config_module
from snapshot_ensembles.config import CycleConfig, DataConfig, ModelConfig, TrainConfig, TrainingConfig
from snapshot_ensembles.errors import UserError
from snapshot_ensembles.training import run_state

@pytest.mark.parametrize("argv", [[], ["--recipe", "paper", "--model", "dn", "--val_split", "0.1"],
                                  ["--no_augment", "--mixed_precision", "--no_deterministic", "--M", "2",
                                   "--nb_epoch", "4", "--distribute", "mirrored", "--cpu_devices", "2"]])
def test_the_saved_flags_are_the_parsers_flags_and_load_back_to_the_same_configuration(argv):
    config = train_config(*argv)
    flat = config.to_dict()
    parser_flags = set(vars(cli.training_parser("cifar10").parse_args(argv))) - {"verbosity"}
    assert set(flat) == parser_flags - {"no_augment"}  # --no_augment is a spelling of --augment none
    assert TrainConfig.from_dict(flat) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(flat))) == config


def test_a_run_recorded_before_a_setting_existed_is_not_resumed_but_started_over():
    # The first version's record of `--wrn_N 1 --wrn_k 1 --nb_epoch 4 --M 2 --momentum 0.9 --val_split 0.2`:
    # no --recipe, --weight_decay, --augment, --normalize, --bn_momentum, --deterministic or --mixed_precision.
    saved = {"M": 2, "nb_epoch": 4, "alpha_zero": 0.1, "model": "wrn", "wrn_N": 1, "wrn_k": 1, "dn_depth": 40,
             "dn_growth_rate": 12, "dn_blocks": 3, "batch_size": 128, "dropout": 0.0, "momentum": 0.9,
             "nesterov": False, "schedule": "epoch", "val_split": 0.2, "seed": 0, "no_augment": False,
             "weights_dir": "weights", "resume": True, "data_dir": None, "data_sha256": None}
    today = train_config("--wrn_N", 1, "--wrn_k", 1, "--nb_epoch", 4, "--M", 2, "--momentum", 0.9, "--val_split", 0.2)
    with pytest.raises(UserError, match=r"--augment unset \(now original\).*--weight_decay unset \(now 0\).*"
                                        r"start over with --no_resume"):
        run_state.check_same_run(saved, today.to_dict(), "a run", "weights")
    with pytest.raises(ValueError, match="unknown configuration fields: no_augment"):
        TrainConfig.from_dict(saved)


def test_a_program_builds_the_configuration_without_flags_and_gets_library_errors():
    config = TrainConfig(model=ModelConfig("resnet", resnet_depth=20), cycles=CycleConfig(M=2, nb_epoch=4),
                         training=TrainingConfig(recipe="paper"), data=DataConfig(val_split=0.1)).resolved()
    assert config.prefix == "ResNet-CIFAR10-20"
    assert (config.training.batch_size, config.cycles.schedule, config.training.momentum) == (64, "batch", 0.9)
    assert config.resolved() == config
    for bad in (dataclasses.replace(config, model=ModelConfig("dn", dn_depth=41)),
                dataclasses.replace(config, cycles=CycleConfig(M=3, nb_epoch=4)),
                dataclasses.replace(config, training=TrainingConfig(augment="sideways")),
                dataclasses.replace(config, dataset="mnist")):
        with pytest.raises(ValueError):
            bad.resolved()
    # Worded for the program's author; the command line names the flag instead (test_training).
    with pytest.raises(ValueError, match=r"^dn_depth=41 is not of the form 3n\+4"):
        bad = dataclasses.replace(config, model=ModelConfig("dn", dn_depth=41))
        bad.resolved()
    with pytest.raises(ValueError, match=r"^nesterov needs a momentum: add for example momentum=0.9$"):
        dataclasses.replace(config, training=TrainingConfig(nesterov=True, momentum=0.0)).resolved()
    with pytest.raises(ValueError, match="unknown configuration fields: colour"):
        TrainConfig.from_dict({"colour": "blue"})


def test_no_package_module_reads_argv_or_argparse_or_imports_a_root_module():
    """The layering the README describes: the command line builds the configuration, the package takes it."""
    package = os.path.join(REPO, "snapshot_ensembles")
    offending = []
    for folder, _, names in os.walk(package):
        for name in names:
            if not name.endswith(".py") or os.path.join(folder, name) == os.path.join(package, "cli.py"):
                continue
            with open(os.path.join(folder, name)) as fh:
                for number, line in enumerate(fh, 1):
                    if re.search(r"\bargv\b|\bargparse\b|^\s*(import snapshot\b|from snapshot import|"
                                 r"import models\b|from models\b)", line):
                        offending.append(f"{name}:{number}: {line.strip()}")
    assert offending == []


def test_the_original_import_paths_still_work():
    import models
    import models.wide_residual_net
    import snapshot
    from snapshot_ensembles import models as package_models
    from snapshot_ensembles.training import callbacks

    assert snapshot.SnapshotCallbackBuilder is callbacks.SnapshotCallbackBuilder
    assert models.create_wide_residual_network is package_models.create_wide_residual_network
    assert models.wide_residual_net.create_wide_residual_network is package_models.create_wide_residual_network


TINY = ["--wrn_N", "1", "--wrn_k", "1", "--nb_epoch", "2", "--M", "1", "--batch_size", "64"]


def test_quiet_prints_only_notes_and_results_and_verbose_adds_keras_progress(cifar10_dir, tmp_path):
    data_dir, sha = cifar10_dir
    runs = {}
    for mode in ("--quiet", "--verbose"):  # the default output is asserted by test_training
        argv = [*TINY, "--data_dir", data_dir, "--data_sha256", sha, "--weights_dir", tmp_path / mode, mode]
        runs[mode] = run_script("train_cifar_10.py", *argv)
        assert runs[mode].returncode == 0, runs[mode].stderr[-2000:]
        assert runs[mode].stderr == "", runs[mode].stderr[-2000:]
    quiet = runs["--quiet"].stdout.splitlines()
    # The warnings: so few steps per epoch lag BatchNormalization's statistics (test_training).
    expected = ["note:", "warning:", "Final", "Accuracy", "Error", "warning:"]
    assert [line.split(" ")[0] for line in quiet] == expected, quiet
    verbose = runs["--verbose"].stdout
    assert "Epoch 1/2" in verbose and "━" in verbose  # Keras's progress bar of every step
    assert "━" not in runs["--quiet"].stdout


def test_the_readme_python_flows_build_the_configurations_the_scripts_would(monkeypatch):
    """README "The CIFAR flows from Python": its code, run with the flows replaced by recorders."""
    from snapshot_ensembles import prediction, training

    with open(os.path.join(REPO, "README.md")) as fh:
        section = fh.read().split("### The CIFAR flows from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    calls = []
    monkeypatch.setattr(training, "train", lambda config, data=None: (calls.append(config), (None, {}))[1])
    monkeypatch.setattr(prediction, "predict", lambda config, data=None: calls.append(config))
    exec(compile(code, "README.md", "exec"), {})
    the_script = cli.train_config("cifar10", ["--wrn_N", "2", "--wrn_k", "4", "--M", "5", "--nb_epoch", "200",
                                              "--recipe", "paper", "--val_split", "0.1"])
    assert calls[0].resolved() == the_script  # train() resolves what it is given, as the script did
    assert calls[1] == cli.predict_config("cifar10", ["--wrn_N", "2", "--wrn_k", "4", "--optimize", "1"])


@pytest.mark.parametrize("bad,field", [(dict(cycles=CycleConfig(alpha_zero=0)), "alpha_zero"),
                                       (dict(training=TrainingConfig(batch_size=0)), "batch_size"),
                                       (dict(training=TrainingConfig(dropout=1.5)), "dropout"),
                                       (dict(data=DataConfig(val_split=1.0)), "val_split"),
                                       (dict(devices=config_module.DeviceConfig(distribute="bogus")), "distribute")])
def test_a_value_out_of_range_is_refused_before_any_file_of_an_earlier_run_is_touched(bad, field, tmp_path):
    from snapshot_ensembles import training

    earlier = tmp_path / "WRN-CIFAR10-16-4-1.weights.h5"
    earlier.write_bytes(b"an earlier run's snapshot")
    (tmp_path / "WRN-CIFAR10-16-4-run.json").write_text("{}")
    config = TrainConfig(weights_dir=str(tmp_path), resume=False, **bad)
    with pytest.raises(ValueError, match=f"^{field}=.* (is out of range|is not one of the choices)"):
        training.train(config)
    assert earlier.read_bytes() == b"an earlier run's snapshot"


def test_an_integer_choice_takes_numpys_integers_but_not_text_or_booleans():
    import numpy as np

    assert config_module.PredictConfig(optimize=np.int64(-1)).check().optimize == -1
    for value in ("1", True, 1.0):
        with pytest.raises(ValueError, match="^optimize=.* is not one of the choices: -1, 0, 1"):
            config_module.PredictConfig(optimize=value).check()
