"""Train a snapshot ensemble on CIFAR-100. See README.md or --help for the flags."""

from snapshot_ensembles.cli import run_cli, train_command

main = train_command("cifar100")

if __name__ == "__main__":
    run_cli(main)
