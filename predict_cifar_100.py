"""Predict CIFAR-100 with a snapshot ensemble. See README.md or --help for the flags."""

from snapshot_ensembles.cli import run_cli
from snapshot_ensembles.prediction import main_for

main = main_for("cifar100")

if __name__ == "__main__":
    run_cli(main)
