"""Predict CIFAR-100 with a snapshot ensemble. See README.md or --help for the flags."""

from snapshot_ensembles.cli import predict_command, run_cli

main = predict_command("cifar100")

if __name__ == "__main__":
    run_cli(main)
