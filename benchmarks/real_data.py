"""Every training command of the README, shortened, on a real CIFAR-10 archive; then snapshots against one cycle.

    python benchmarks/real_data.py --data_dir DIR [--data_sha256 HEX] [--weights_dir NEW_DIR] [--peer]

Runs the real entry scripts (train_cifar_10.py, predict_cifar_10.py) in subprocesses, one at a time:

1. each training command the README offers (the CIFAR flow, the backends and scaling examples, every
   row of "Reproducing the paper"), shortened in epochs and, where a row is too slow for 2 CPU cores,
   in depth or width (COMMANDS says how each is shortened), and prints per command the mean training
   loss of the first and last epoch, whether the run diverged, and the final network's test accuracy;
2. the paper's recipe and network for 3 cycles against one cycle of the same budget, with accuracy,
   NLL and ECE of the 3-snapshot ensemble, of its last snapshot and of the one-cycle model
   (predict_cifar_10.py --optimize -1 --report);
3. with `--peer`, the independent reference: the same network and recipe trained by a plain PyTorch
   loop (benchmarks/peer_training.py) for the original's WRN with `--recipe original` and the paper's
   WRN with `--recipe paper`, over `--seeds`, with the test accuracy's binomial standard error.

Every shortened run uses BatchNormalization momentum 0.9 (PyTorch's and Torch's 0.1): with 37-73 steps
an epoch, the default 0.99 (a time constant of 100 steps) leaves the moving statistics of a few-epoch
run behind its weights, and the test accuracy says nothing about training. `--quick` shrinks every
network and epoch count further (for the tests). `--only TEXT` keeps the commands whose row names
contain TEXT. Measured figures: docs/real_data.md.
"""

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import measure  # noqa: E402
from measure import sha256_or_skip  # noqa: E402
from snapshot_ensembles.data import CIFAR  # noqa: E402
from snapshot_ensembles.models.build import cpu_flags  # noqa: E402

SHORT_BN_MOMENTUM = "0.9"
COMMON = ("--bn_momentum", SHORT_BN_MOMENTUM, "--no_resume")


@dataclasses.dataclass(frozen=True)
class Command:
    """One README training command and the shortened run of it."""

    row: str  # where the README offers it
    readme: str  # the README's command
    args: tuple  # the flags of the shortened run (train_cifar_10.py)
    backend: str = "tensorflow"
    environment: tuple = ()  # extra (name, value) pairs

    def quick_args(self):
        """The tiny version for tests: the smallest network of its kind and one epoch per cycle."""
        args = list(self.args)
        tiny = {"--wrn_N": "1", "--wrn_k": "1", "--resnet_depth": "8", "--dn_depth": "7", "--dn_growth_rate": "2"}
        for flag, value in tiny.items():
            if flag in args:
                args[args.index(flag) + 1] = value
        args[args.index("--nb_epoch") + 1] = args[args.index("--M") + 1]
        return tuple(args)


def _paper(row, readme_tail, args):
    return Command(f"Reproducing the paper: {row}", f"train_cifar_100.py --recipe paper {readme_tail}",
                   ("--recipe", "paper", *args))


# Sized for 30 minutes on 2 CPU cores (docs/real_data.md). The WRN-16-4 of the CIFAR flow, the
# backends and scaling runs as WRN-10-2 (one block per group, half the width); the paper's
# Wide-ResNet-32 (N=5, k=4) keeps its depth at width 1; ResNet-110 runs as ResNet-20; DenseNet-40-12
# and -100-24 run 4 layers per dense block (depth 16) at their growth rates. The CIFAR flow runs
# 2 cycles of 2 epochs, the other examples 2 epochs; the paper's rows 2 epochs, its Snapshot
# Ensemble rows as 2 cycles of 1 epoch (M=5 and 6 become 2), the single-model rows --M 1 multistep.
# A Snapshot Ensemble row with alpha0 = 0.1 trains the network and recipe of its alpha0 = 0.2 row
# with half the peak learning rate: to fit 30 minutes only the 0.2 row runs, the harder test of stability.
FLOW_WRN = ("--model", "wrn", "--wrn_N", "1", "--wrn_k", "2")
PAPER_WRN = ("--model", "wrn", "--wrn_N", "5", "--wrn_k", "1")
PAPER_RESNET = ("--model", "resnet", "--resnet_depth", "20")
PAPER_DN40 = ("--model", "dn", "--dn_depth", "16", "--dn_growth_rate", "12")
PAPER_DN100 = ("--model", "dn", "--dn_depth", "16", "--dn_growth_rate", "24")
SINGLE = ("--M", "1", "--nb_epoch", "2", "--schedule", "multistep", "--alpha_zero", "0.1")


def _ensemble(alpha):
    return ("--M", "2", "--nb_epoch", "2", "--alpha_zero", alpha)


COMMANDS = (
    Command("CIFAR flow 1 (train)", "train_cifar_10.py --M 5 --nb_epoch 200 --alpha_zero 0.1 --model wrn --wrn_N 2 --wrn_k 4",
            (*FLOW_WRN, "--M", "2", "--nb_epoch", "4", "--alpha_zero", "0.1")),
    Command("Backends: JAX", "KERAS_BACKEND=jax train_cifar_10.py --M 5 --nb_epoch 200 --wrn_N 2 --wrn_k 4",
            (*FLOW_WRN, "--M", "1", "--nb_epoch", "2"), backend="jax"),
    Command("Backends: PyTorch", "KERAS_BACKEND=torch train_cifar_10.py --M 5 --nb_epoch 200 --wrn_N 2 --wrn_k 4",
            (*FLOW_WRN, "--M", "1", "--nb_epoch", "2"), backend="torch"),
    Command("Scaling out: mirrored (TensorFlow)", "train_cifar_10.py --distribute mirrored --M 5 --nb_epoch 200 "
            "--wrn_N 2 --wrn_k 4", (*FLOW_WRN, "--distribute", "mirrored", "--M", "1", "--nb_epoch", "2")),
    Command("Scaling out: mirrored (JAX)", "KERAS_BACKEND=jax train_cifar_10.py --distribute mirrored --M 5 "
            "--nb_epoch 200 --wrn_N 2 --wrn_k 4",
            (*FLOW_WRN, "--distribute", "mirrored", "--M", "1", "--nb_epoch", "2"), backend="jax"),
    Command("Scaling out: 2 CPU devices", "train_cifar_10.py --distribute mirrored --cpu_devices 2 --wrn_N 1 "
            "--wrn_k 1 --nb_epoch 4 --M 2",
            ("--distribute", "mirrored", "--cpu_devices", "2", "--model", "wrn", "--wrn_N", "1", "--wrn_k", "1",
             "--nb_epoch", "4", "--M", "2")),
    Command("Scaling out: batch 512, alpha_zero 0.4", "train_cifar_10.py --batch_size 512 --alpha_zero 0.4 "
            "(the linear scaling rule's example)",
            (*FLOW_WRN, "--batch_size", "512", "--alpha_zero", "0.4", "--M", "1", "--nb_epoch", "4")),
    _paper("ResNet-110, single model", "--model resnet --M 1 --nb_epoch 200 --schedule multistep --alpha_zero 0.1",
           (*PAPER_RESNET, *SINGLE)),
    _paper("ResNet-110, SE alpha0 = 0.2 (and 0.1)", "--model resnet --M 5 --nb_epoch 200 --alpha_zero 0.2",
           (*PAPER_RESNET, *_ensemble("0.2"))),
    _paper("Wide-ResNet-32, single model", "--model wrn --wrn_N 5 --wrn_k 4 --M 1 --nb_epoch 200 --schedule multistep "
           "--alpha_zero 0.1", (*PAPER_WRN, *SINGLE)),
    _paper("Wide-ResNet-32, SE alpha0 = 0.2 (and 0.1)", "--model wrn --wrn_N 5 --wrn_k 4 --M 5 --nb_epoch 200 --alpha_zero 0.2",
           (*PAPER_WRN, *_ensemble("0.2"))),
    _paper("DenseNet-40, single model", "--model dn --dn_depth 40 --dn_growth_rate 12 --M 1 --nb_epoch 300 "
           "--schedule multistep --alpha_zero 0.1", (*PAPER_DN40, *SINGLE)),
    _paper("DenseNet-40, SE alpha0 = 0.2 (and 0.1)", "--model dn --dn_depth 40 --dn_growth_rate 12 --M 6 --nb_epoch 300 "
           "--alpha_zero 0.2", (*PAPER_DN40, *_ensemble("0.2"))),
    _paper("DenseNet-100, single model", "--model dn --dn_depth 100 --dn_growth_rate 24 --M 1 --nb_epoch 300 "
           "--schedule multistep --alpha_zero 0.1", (*PAPER_DN100, *SINGLE)),
    _paper("DenseNet-100, SE alpha0 = 0.2 (and 0.1)", "--model dn --dn_depth 100 --dn_growth_rate 24 --M 6 --nb_epoch 300 "
           "--alpha_zero 0.2", (*PAPER_DN100, *_ensemble("0.2"))),
)

# The paper's recipe and Wide ResNet (at the shortened rows' size): 3 cycles against 1 of the same epochs.
SNAPSHOT_NETWORK = PAPER_WRN
SNAPSHOT_EPOCHS = 6
# The independent reference (--peer): each recipe's WRN, trained by ours and by a plain PyTorch loop.
PEER_NETWORK = {"wrn_N": 1, "wrn_k": 2}
PEER_EPOCHS = 4


@dataclasses.dataclass
class Outcome:
    """What one training run gave."""

    row: str
    command: str
    losses: list
    diverged: bool
    test_accuracy: float
    seconds: float
    epoch_seconds: float  # the sum of Keras's per-epoch times (0 where none printed)
    returncode: int


def cpu_description():
    """'model name; N cores; flags: ...' of this machine's CPU (all its flags), as every figure is printed with."""
    name, _ = measure.cpu_description()
    flags = cpu_flags()
    return f"{name}; {os.cpu_count()} cores; flags: {' '.join(sorted(flags)) if flags else 'unknown'}"


def versions():
    found = []
    for package in ("tensorflow", "keras", "jax", "torch"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def resolve_data_dir(data_dir, work_dir):
    """The folder to pass the scripts: `data_dir` itself when it holds the official archive name or the
    extracted folder; else, when it holds one other cifar-10*.tar.gz, a folder linking it under the
    official name (the scripts look for that name only)."""
    spec = CIFAR["cifar10"]
    if not os.path.isdir(data_dir):
        raise SystemExit(f"error: --data_dir {data_dir} is not a folder: pass the folder holding "
                         f"{spec.archive} or {spec.folder}/")
    if os.path.exists(os.path.join(data_dir, spec.archive)) or os.path.isdir(os.path.join(data_dir, spec.folder)):
        return os.path.abspath(data_dir)
    candidates = sorted(glob.glob(os.path.join(data_dir, "cifar-10*.tar.gz")))
    if len(candidates) != 1:
        raise SystemExit(f"error: no CIFAR-10 archive in {data_dir}: put {spec.archive} (or one other "
                         f"cifar-10*.tar.gz, or the extracted {spec.folder}/) there")
    linked = os.path.join(work_dir, "data")
    os.makedirs(linked, exist_ok=True)
    os.symlink(os.path.abspath(candidates[0]), os.path.join(linked, spec.archive))
    print(f"note: reading {candidates[0]} as {spec.archive}")
    return linked


EPOCH_LINE = re.compile(r"^\s*\d+/\d+ - (\d+)s - ", re.MULTILINE)
ACCURACY_LINE = re.compile(r"^Accuracy :\s+([0-9.]+)", re.MULTILINE)


def run_training(row, script_args, data_args, weights_dir, backend="tensorflow", environment=(), log=None, seed=0):
    """Run train_cifar_10.py with `script_args` into `weights_dir`; its Outcome."""
    argv = [sys.executable, os.path.join(REPO, "train_cifar_10.py"), *script_args, *COMMON, "--seed", str(seed),
            *data_args, "--weights_dir", weights_dir]
    env = dict(os.environ, KERAS_BACKEND=backend, **dict(environment))
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    if log is not None:
        with open(log, "w") as fh:
            fh.write(" ".join(argv) + "\n" + text)
    histories = glob.glob(os.path.join(weights_dir, "*-training.json"))
    losses = []
    if histories:
        with open(histories[0]) as fh:
            losses = [float(value) for value in json.load(fh).get("loss", [])]
    diverged = "diverged" in text or any(not math.isfinite(value) for value in losses)
    accuracy = ACCURACY_LINE.findall(done.stdout)
    command = " ".join(script_args)
    if backend != "tensorflow":
        command = f"KERAS_BACKEND={backend} {command}"
    if done.returncode != 0 and not diverged:
        tail = text.strip().splitlines()[-3:]
        print(f"  {row}: exit {done.returncode}: " + " / ".join(tail), flush=True)
    return Outcome(row, command, losses, diverged, float(accuracy[-1]) / 100 if accuracy else None, seconds,
                   float(sum(int(s) for s in EPOCH_LINE.findall(done.stdout))), done.returncode)


def _figure(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f} %"


def outcome_row(outcome):
    first = outcome.losses[0] if outcome.losses else None
    last = outcome.losses[-1] if outcome.losses else None
    return (f"| {outcome.row} | `{outcome.command}` | {_figure(first)} | {_figure(last)} | "
            f"{'yes' if outcome.diverged else 'no'} | {_percent(outcome.test_accuracy)} | "
            f"{outcome.seconds:.0f} ({outcome.epoch_seconds:.0f}) |")


COMMANDS_HEADER = ("| README command | shortened run (train_cifar_10.py) | loss, epoch 1 | loss, last epoch | "
                   "diverged | test accuracy | seconds (in epochs) |\n|---|---|---|---|---|---|---|")


def run_commands(commands, data_args, work_dir, quick):
    print("\n## Every README training command, shortened\n", flush=True)
    outcomes = []
    for index, command in enumerate(commands):
        args = command.quick_args() if quick else command.args
        weights_dir = os.path.join(work_dir, f"command-{index:02d}")
        outcome = run_training(command.row, args, data_args, weights_dir, command.backend, command.environment,
                               log=os.path.join(work_dir, f"command-{index:02d}.log"))
        outcomes.append(outcome)
        print("  " + outcome_row(outcome), flush=True)
    print("\n" + COMMANDS_HEADER)
    for outcome in outcomes:
        print(outcome_row(outcome))
    return outcomes


def predict_report(model_args, M, data_args, weights_dir, report):
    argv = [sys.executable, os.path.join(REPO, "predict_cifar_10.py"), *model_args, "--M", str(M), "--optimize", "-1",
            "--report", report, *data_args, "--weights_dir", weights_dir]
    done = subprocess.run(argv, env=dict(os.environ, KERAS_BACKEND="tensorflow"), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  prediction failed (exit {done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
        return None
    with open(report) as fh:
        return json.load(fh)


def _scores(entry):
    return {name: entry[name] for name in ("accuracy", "nll", "ece")}


def run_snapshot_comparison(data_args, work_dir, quick):
    """The paper's recipe and WRN, 3 cycles against 1, same epochs: dict of row name -> scores."""
    network = [*SNAPSHOT_NETWORK]
    epochs = 3 if quick else SNAPSHOT_EPOCHS
    if quick:
        network[network.index("--wrn_N") + 1] = "1"
    rows = {}
    print(f"\n## Snapshot ensemble (M = 3) against one cycle, {epochs} epochs each, --recipe paper\n", flush=True)
    for M in (3, 1):
        weights_dir = os.path.join(work_dir, f"snapshot-M{M}")
        args = ("--recipe", "paper", *network, "--M", str(M), "--nb_epoch", str(epochs), "--alpha_zero", "0.1")
        outcome = run_training(f"M = {M}", args, data_args, weights_dir, log=os.path.join(work_dir, f"snapshot-M{M}.log"))
        print("  " + outcome_row(outcome), flush=True)
        if outcome.returncode != 0:
            continue
        report = predict_report(network, M, data_args, weights_dir, os.path.join(work_dir, f"report-M{M}.json"))
        if report is None:
            continue
        if M == 3:
            rows["snapshot ensemble, 3 snapshots, equal weights"] = _scores(report["ensemble_size_curve"][-1])
            rows["its last snapshot alone"] = _scores(report["members"][-1])
        else:
            rows["one cycle (single model), same epochs"] = _scores(report["members"][-1])
    print("\n| model | test accuracy | NLL | ECE |\n|---|---|---|---|")
    for name, scores in rows.items():
        print(f"| {name} | {_percent(scores['accuracy'])} | {scores['nll']:.4f} | {scores['ece']:.4f} |")
    return rows


def run_peer(data_args, work_dir, seeds, quick, nb_test):
    """Ours against the PyTorch loop, per recipe and seed: list of dicts."""
    network = {"wrn_N": 1, "wrn_k": 1} if quick else PEER_NETWORK
    epochs = 1 if quick else PEER_EPOCHS
    flags = ("--model", "wrn", "--wrn_N", str(network["wrn_N"]), "--wrn_k", str(network["wrn_k"]), "--M", "1",
             "--nb_epoch", str(epochs), "--alpha_zero", "0.1")
    print(f"\n## Independent reference: ours against a plain PyTorch loop, {epochs} epochs, one cycle\n", flush=True)
    results = []
    for recipe in ("original", "paper"):
        for seed in seeds:
            ours = run_training(f"ours, --recipe {recipe}, seed {seed}",
                                ("--recipe", recipe, *flags), data_args,
                                os.path.join(work_dir, f"peer-ours-{recipe}-{seed}"),
                                log=os.path.join(work_dir, f"peer-ours-{recipe}-{seed}.log"), seed=seed)
            argv = [sys.executable, os.path.join(REPO, "benchmarks", "peer_training.py"), "--recipe", recipe,
                    "--wrn_N", str(network["wrn_N"]), "--wrn_k", str(network["wrn_k"]), "--M", "1",
                    "--nb_epoch", str(epochs), "--alpha_zero", "0.1", "--bn_momentum", SHORT_BN_MOMENTUM,
                    "--seed", str(seed), *data_args]
            # Passive OpenMP waiting: on a loaded machine, spinning PyTorch threads ran 4x slower.
            env = dict(os.environ, KERAS_BACKEND="torch", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
            peer = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
            if peer is None:
                print(f"  PyTorch loop failed (exit {done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
            results.append({"recipe": recipe, "seed": seed, "ours": ours, "peer": peer})
            print(f"  --recipe {recipe}, seed {seed}: ours {_percent(ours.test_accuracy)} "
                  f"(loss {_figure(ours.losses[0] if ours.losses else None)} -> "
                  f"{_figure(ours.losses[-1] if ours.losses else None)}, {ours.seconds:.0f} s), PyTorch "
                  f"{_percent(peer and peer['test_accuracy'])} (loss {_figure(peer and peer['loss'][0])} -> "
                  f"{_figure(peer and peer['loss'][-1])}, {peer and peer['seconds']} s)", flush=True)
    print("\n| recipe, network | seed | ours: test accuracy | PyTorch loop: test accuracy | difference | "
          "binomial SE of one accuracy |\n|---|---|---|---|---|---|")
    for result in results:
        ours, peer = result["ours"].test_accuracy, result["peer"] and result["peer"]["test_accuracy"]
        standard_error = None
        if ours is not None:
            standard_error = math.sqrt(ours * (1 - ours) / nb_test)
        difference = None if ours is None or peer is None else ours - peer
        name = result["peer"]["network"] if result["peer"] else ""
        print(f"| --recipe {result['recipe']}, {name} | {result['seed']} | {_percent(ours)} | {_percent(peer)} | "
              f"{'-' if difference is None else f'{100 * difference:+.1f} points'} | "
              f"{'-' if standard_error is None else f'{100 * standard_error:.1f} points'} |")
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True,
                        help="folder holding cifar-10-python.tar.gz (or one other cifar-10*.tar.gz, or the "
                             "extracted cifar-10-batches-py/)")
    parser.add_argument("--data_sha256", type=sha256_or_skip, default=None,
                        help="the archive's expected SHA-256 ('skip': no check; default: the official archive's)")
    parser.add_argument("--weights_dir", default=None,
                        help="a new or empty folder to keep every run's files and logs in (default: a temporary "
                             "folder, deleted at the end)")
    parser.add_argument("--parts", default="commands,snapshot",
                        help="comma-separated: commands, snapshot, peer (default: %(default)s)")
    parser.add_argument("--peer", action="store_true", help="add the PyTorch reference (the part 'peer')")
    parser.add_argument("--seeds", default="0,1", help="seeds of the PyTorch reference (default: %(default)s)")
    parser.add_argument("--only", default=None, metavar="TEXT", help="only the commands whose row contains TEXT")
    parser.add_argument("--quick", action="store_true", help="tiny networks, one epoch per cycle (for tests)")
    parser.add_argument("--json", default=None, metavar="PATH.json", help="also write every figure as JSON")
    args = parser.parse_args(argv)
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if args.peer:
        args.parts.add("peer")
    unknown = args.parts - {"commands", "snapshot", "peer"}
    if unknown:
        parser.error(f"--parts: unknown part {sorted(unknown)[0]!r}; choose among commands, snapshot, peer")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.weights_dir and os.path.exists(args.weights_dir) and (
            not os.path.isdir(args.weights_dir) or os.listdir(args.weights_dir)):
        parser.error(f"--weights_dir {args.weights_dir} exists and is not an empty folder: name a new one")
    if args.json and os.path.exists(args.json):
        parser.error(f"--json {args.json} exists: name a new file")
    return args


def main(argv=None):
    args = parse_args(argv)
    commands = [command for command in COMMANDS if args.only is None or args.only in command.row]
    if "commands" in args.parts and not commands:
        print(f"error: --only {args.only!r} matches no command; rows are: "
              + "; ".join(command.row for command in COMMANDS), file=sys.stderr)
        return 2
    work_dir = os.path.abspath(args.weights_dir) if args.weights_dir else tempfile.mkdtemp(prefix="real-data-")
    os.makedirs(work_dir, exist_ok=True)
    try:
        try:
            data_dir = resolve_data_dir(args.data_dir, work_dir)
        except SystemExit as err:
            print(err, file=sys.stderr)
            return 2
        raw_data_args = ["--data_dir", data_dir] + (["--data_sha256", args.data_sha256] if args.data_sha256 else [])
        from snapshot_ensembles.data import load_cifar
        from snapshot_ensembles.errors import UserError

        try:
            dataset = load_cifar("cifar10", data_dir, args.data_sha256, allow_download=False)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"CPU: {cpu_description()}")
        print(f"Software: Python {sys.version.split()[0]}, {versions()}")
        print(f"Data: {len(dataset.x_train)} training and {len(dataset.x_test)} test images from {args.data_dir}")
        print(f"Load average at the start (1, 5, 15 min): {measure.load_average()}", flush=True)
        start = time.perf_counter()
        record = {"cpu": cpu_description(), "versions": versions(), "train_images": len(dataset.x_train),
                  "test_images": len(dataset.x_test)}
        if "commands" in args.parts:
            record["commands"] = [dataclasses.asdict(outcome)
                                  for outcome in run_commands(commands, raw_data_args, work_dir, args.quick)]
        if "snapshot" in args.parts:
            record["snapshot"] = run_snapshot_comparison(raw_data_args, work_dir, args.quick)
        if "peer" in args.parts:
            results = run_peer(raw_data_args, work_dir, args.seeds, args.quick, len(dataset.x_test))
            record["peer"] = [dict(result, ours=dataclasses.asdict(result["ours"])) for result in results]
        record["seconds"] = round(time.perf_counter() - start, 1)
        print(f"\nWall time: {record['seconds'] / 60:.1f} minutes; load average at the end (1, 5, 15 min): "
              f"{measure.load_average()}")
        print(f"CPU: {cpu_description()}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(record, fh, indent=1)
        return 0
    finally:
        if not args.weights_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
