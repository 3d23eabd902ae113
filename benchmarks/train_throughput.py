"""Training throughput of our flow against the peer a user would pick instead: a plain PyTorch loop.

    python benchmarks/train_throughput.py --model wrn     # WRN-16-4, batch 128
    python benchmarks/train_throughput.py --model dn      # DenseNet-40-12, batch 64

ours:        train_cifar_10.py's training flow on TensorFlow, training.fit_snapshot_ensemble after
             seed_everything (op determinism on): tf.data pipeline with the augmentation, snapshot
             callbacks, divergence guard, per-epoch run-state checkpoint; bfloat16 with
             --mixed_precision's policy; --no_deterministic: the training scripts' fast mode (no op
             determinism, fused BatchNormalization);
peer:        the same network in PyTorch (benchmarks/torch_peer.py, parameter counts checked), a plain
             loop on one in-memory batch: SGD, channels_last, float32 or bfloat16 under torch.autocast,
             in a process of its own (no TensorFlow threads beside it);
keras-jax,   our flow on Keras 3's JAX and PyTorch backends, each in a subprocess (KERAS_BACKEND), run
keras-torch: first; --backend_steps timed steps (5: fewer than ours and the peer's). JAX is timed by
             default for WRN only: XLA spends about 2.5 minutes compiling DenseNet-40-12 (--backends
             jax,torch times it). A missing backend's column says why.
limit:       a large float32 matmul's rate divided by the network's FLOPs per training image.

Ours and the peer alternate in blocks of --block steps inside one run (the peer's block runs
between two of our steps), so that a machine whose load changes slows both alike; their ratio is
the median of the ratios of neighbouring blocks. Every rate is the batch over the median step time
of --steps timed steps after --warmup untimed ones (the first traces the step); the spread is the
25th-75th percentile of the per-step rates. The peer starts and warms up while ours builds and
traces, never while a timed step runs. The bfloat16 columns run where the CPU has bfloat16
instructions (avx512_bf16 or amx_bf16), or with --bf16 on. The run ends with its wall time, phase by
phase; the last line of output is one JSON object with the figures.
"""

import time

STARTED = time.perf_counter()  # the wall time counts from here, before the imports

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from types import SimpleNamespace  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from snapshot_ensembles import backend_start, training  # noqa: E402
from measure import cpu_description, describe_cpu, load_average, rate_summary  # noqa: E402
from snapshot_ensembles.config import CycleConfig, ModelConfig, TrainConfig, TrainingConfig  # noqa: E402
from snapshot_ensembles.models.build import cpu_has_native_bfloat16, set_precision  # noqa: E402

KERAS_BACKENDS = ("jax", "torch")
# Per network, the backend columns a default run times. XLA alone takes about 2.5 minutes to build
# and compile DenseNet-40-12 in both precisions, which a 5-minute run cannot hold (docs/performance.md).
DEFAULT_BACKENDS = {"wrn": ("jax", "torch"), "dn": ("torch",)}


def block_ratio(ours, peer, block):
    """Median over neighbouring blocks of ours' rate / the peer's rate (each block's median step)."""
    ratios = [np.median(peer[i:i + block]) / np.median(ours[i:i + block]) for i in range(0, len(ours), block)]
    return round(float(np.median(ratios)), 4)


class InterleavedTimer(keras.callbacks.Callback):
    """Times each of our training steps; after every `block` timed ones, runs a block of each peer.

    A step is timed from its batch-begin to its batch-end hook, after its loss is read (JAX
    dispatches asynchronously: reading the loss waits for the step). The first `warmup` steps
    (tracing, compilation) are not timed; after them, it waits for each peer's own start and
    warm-up (torch_peer.TrainerProcess.start), so that no peer runs beside a timed step.
    """

    def __init__(self, warmup, block=None, peers=None):
        super().__init__()
        self.warmup, self.block, self.peers = warmup, block, peers or {}
        self.seconds, self.peer_seconds = [], {name: [] for name in self.peers}
        self.steps_done = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float((logs or {}).get("loss", 0.0))
        elapsed = time.perf_counter() - self.start
        self.steps_done += 1
        if self.steps_done == self.warmup:
            for peer in self.peers.values():
                peer.wait_started(self.model)
        if self.steps_done <= self.warmup:
            return
        self.seconds.append(elapsed)
        if self.block and len(self.seconds) % self.block == 0:
            for name, peer in self.peers.items():
                self.peer_seconds[name].extend(peer.timed_steps(self.block))


def time_our_flow(config, steps, warmup, mixed, weights_dir, block=None, peers=None, jit_compile=False):
    """Our flow for warmup + steps steps in one epoch; returns the InterleavedTimer."""
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, mixed_precision=mixed))
    set_precision(mixed)
    keras.utils.set_random_seed(config.training.seed)  # each precision starts from the same weights and data
    try:
        model = training.compile_model(training.build_training_model(config, 10), config, warmup + steps)
        if jit_compile:
            model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
        rng = np.random.default_rng(config.training.seed)
        batch_size = config.training.batch_size
        nb_images = batch_size * (warmup + steps)
        x = rng.integers(0, 256, size=(nb_images, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=nb_images).astype(np.int32)
        splits = training.Splits(x_train=x, y_train=y, x_val=x[:batch_size], y_val=y[:batch_size])
        timer = InterleavedTimer(warmup, block, peers)
        training.fit_snapshot_ensemble(model, splits, config, extra_callbacks=[timer])
    finally:
        set_precision(False)
        shutil.rmtree(weights_dir, ignore_errors=True)
        os.makedirs(weights_dir)
    return timer


def forward_flops(model):
    """Multiply-adds x 2 of the convolutions and dense layers for one image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kernel_h, kernel_w, in_channels, _ = layer.kernel.shape
            total += 2 * height * width * kernel_h * kernel_w * in_channels * out_channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total


def matmul_flops_per_second(dtype="float32", sizes=(1024, 2048), seconds=1.0):
    """FLOP/s of the fastest of a few large square matmuls: what dense convolutions approach at best."""
    matmul = tf.function(tf.matmul, autograph=False)
    best = 0.0
    for size in sizes:
        a = tf.cast(tf.random.normal((size, size)), dtype)
        b = tf.cast(tf.random.normal((size, size)), dtype)
        matmul(a, b).numpy()
        repeats, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            matmul(a, b).numpy()
            repeats += 1
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start))
    return best


def keras_backend_column(backend, options, precisions):
    """This script's --child run of our flow on `backend` in a subprocess: its figures, or why there are none."""
    if importlib.util.find_spec(backend) is None:
        return {"skipped": f"{backend} is not installed (pip install -r requirements-backends.txt)"}
    command = [sys.executable, os.path.abspath(__file__), "--model", options.model,
               "--steps", str(options.backend_steps), "--warmup", str(options.warmup),
               "--block", str(options.backend_steps), "--seed", str(options.seed), "--child", ",".join(precisions)]
    if not options.deterministic:
        command.append("--no_deterministic")
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3"))
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        ended = (f"killed by {signal.Signals(-result.returncode).name}" if result.returncode < 0
                 else f"exit {result.returncode}")
        return {"skipped": f"the {backend} run failed ({ended}): {last}"}
    return json.loads(lines[-1])


def child_main(options, config, args, weights_dir):
    """--child: our flow alone on this process's Keras backend, one JSON line."""
    backend_start.start()  # as the training flow starts it (XLA's flags on JAX)
    training.seed_everything(args.seed, options.deterministic)
    figures = {"backend": keras.backend.backend()}
    for precision in options.child.split(","):
        timer = time_our_flow(config, options.steps, options.warmup, precision == "bf16", weights_dir)
        figures[precision] = rate_summary(timer.seconds, args.batch_size)
    print(json.dumps(figures))


def print_row(name, figures, note=""):
    if "img_s" in figures:
        low, high = figures["spread"]
        print(f"{name:<24} {figures['img_s']:8.1f} img/s  ({low:.1f}-{high:.1f}) {note}")
    else:
        print(f"{name:<24}      -          {figures.get('skipped', '')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("wrn", "dn"), default="wrn")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps of ours and of the peer per precision (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first; the first traces the step (default: %(default)s)")
    parser.add_argument("--block", type=int, default=5,
                        help="steps of ours, then of the peer, alternating (default: %(default)s)")
    parser.add_argument("--backends", default=None,
                        help="Keras backends to time our flow on besides TensorFlow, or 'none' (default: jax,torch "
                             "for wrn, torch for dn)")
    parser.add_argument("--backend_steps", type=int, default=5,
                        help="timed steps per precision of each --backends column (default: %(default)s)")
    parser.add_argument("--bf16", choices=("auto", "on", "off", "only"), default="auto",
                        help="time the bfloat16 columns; auto: where the CPU has bfloat16 instructions; "
                             "only: not the float32 ones")
    parser.add_argument("--no_deterministic", dest="deterministic", action="store_false",
                        help="ours as training's --no_deterministic runs: no op determinism, fused "
                             "BatchNormalization")
    parser.add_argument("--jit_compile", action="store_true", help="compile ours with XLA (needs --no_deterministic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # precisions for a keras_backend_column subprocess
    options = parser.parse_args()
    if options.backends is None:
        backends = list(DEFAULT_BACKENDS[options.model])
    else:
        backends = [] if options.backends == "none" else options.backends.split(",")
    if min(options.steps, options.warmup, options.block, options.backend_steps) < 1 or options.steps % options.block:
        parser.error("--steps, --warmup, --block and --backend_steps must be at least 1, and --steps a multiple "
                     "of --block")
    if set(backends) - set(KERAS_BACKENDS):
        parser.error(f"--backends takes {', '.join(KERAS_BACKENDS)} or none")
    if options.jit_compile and options.deterministic:
        parser.error("--jit_compile needs --no_deterministic: Keras turns XLA off under op determinism")

    weights_dir = tempfile.mkdtemp(prefix="train-benchmark-")
    # One epoch of the original recipe; random images and labels: a small rate keeps the losses finite.
    config = TrainConfig(model=ModelConfig(options.model), cycles=CycleConfig(M=1, nb_epoch=1, alpha_zero=0.01),
                         training=TrainingConfig(seed=options.seed, deterministic=options.deterministic),
                         weights_dir=weights_dir, resume=False).resolved()
    # The flat view of the configuration: the flags by name, as the rows and the PyTorch peer read them.
    args = SimpleNamespace(**config.to_dict())
    try:
        if options.child:
            return child_main(options, config, args, weights_dir)
        return parent_main(options, config, args, backends, weights_dir)
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)


class PhaseClock:
    """Wall time of the run, phase by phase, from the process's start (STARTED)."""

    def __init__(self):
        self.seconds = {"start-up": time.perf_counter() - STARTED}

    @contextlib.contextmanager
    def phase(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self):
        total = time.perf_counter() - STARTED
        parts = ", ".join(f"{name} {seconds:.0f}" for name, seconds in self.seconds.items())
        return total, f"wall time {total:.0f} s ({total / 60:.1f} min): {parts}"


def parent_main(options, config, args, backends, weights_dir):
    clock = PhaseClock()
    cpu, flags = cpu_description()
    native_bf16 = bool(cpu_has_native_bfloat16())
    bf16 = options.bf16 in ("on", "only") or options.bf16 == "auto" and native_bf16
    precisions = ["bf16"] if options.bf16 == "only" else ["fp32", "bf16"] if bf16 else ["fp32"]
    model = training.build_training_model(config, 10)
    flops = 3 * forward_flops(model)
    print(describe_cpu(cpu, flags, os.cpu_count()))
    print(f"{model.name}: {model.count_params():,} parameters, {flops / 1e9:.3f} GFLOP per training image, "
          f"batch {args.batch_size}; ours and the PyTorch peer: {options.steps} timed steps after {options.warmup}, "
          f"blocks of {options.block}; Keras {'/'.join(backends) or '-'}: {options.backend_steps} timed steps "
          f"after {options.warmup}", flush=True)

    # The Keras backends first, before this process's TensorFlow takes its threads.
    columns = {f"keras_{backend}": {"skipped": f"not timed by default for this network: --backends "
                                               f"{','.join(KERAS_BACKENDS)} times it"}
               for backend in KERAS_BACKENDS if options.backends is None and backend not in backends}
    for backend in backends:
        with clock.phase(f"keras-{backend}"):
            columns[f"keras_{backend}"] = keras_backend_column(backend, options, precisions)
    figures = {}
    try:
        import torch_peer
    except ImportError as err:
        torch_peer, peer_missing = None, f"PyTorch is not installed ({err}): pip install -r requirements-backends.txt"
    training.seed_everything(args.seed, options.deterministic)
    peers = {}
    if torch_peer is not None:
        peers["peer"] = torch_peer.TrainerProcess(args, args.batch_size, args.alpha_zero, args.seed)
    try:
        for precision in precisions:
            mixed = precision == "bf16"
            for peer in peers.values():
                peer.start(mixed, options.warmup)
            with clock.phase(f"ours+peer {precision}"):
                timer = time_our_flow(config, options.steps, options.warmup, mixed, weights_dir, options.block, peers,
                                      options.jit_compile)
            figures[f"ours_{precision}"] = rate_summary(timer.seconds, args.batch_size)
            if peers:
                figures[f"peer_{precision}"] = rate_summary(timer.peer_seconds["peer"], args.batch_size)
                figures[f"ours_vs_peer_{precision}"] = block_ratio(timer.seconds, timer.peer_seconds["peer"],
                                                                   options.block)
            else:
                figures[f"peer_{precision}"] = {"skipped": peer_missing}
    finally:
        for peer in peers.values():
            peer.close()
    with clock.phase("limit"):
        limit = matmul_flops_per_second() / flops

    for precision in precisions:
        print(f"-- {precision}")
        print_row("ours (TensorFlow)", figures[f"ours_{precision}"])
        ratio = figures.get(f"ours_vs_peer_{precision}")
        print_row("PyTorch loop", figures[f"peer_{precision}"],
                  f"ours / PyTorch = {ratio:.3f} (neighbouring blocks)" if ratio else "")
        for name, column in columns.items():
            print_row(f"ours on Keras {name[6:]}", column.get(precision, column), f"({options.backend_steps} steps)")
    if not bf16:
        print("-- bf16 not timed: " + ("--bf16 off" if native_bf16 else "this CPU has no avx512_bf16 or amx_bf16 "
                                       "(--bf16 on times it emulated)"))
    if "ours_fp32" in figures:
        print(f"limit {limit:.1f} img/s (float32 matmul / FLOPs per image); ours / limit = "
              f"{figures['ours_fp32']['img_s'] / limit:.3f}")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"load average {load_average()} at the end")
    seconds, wall_time = clock.report()
    print(wall_time)

    def img_s(name):
        return figures.get(name, {}).get("img_s")

    summary = {"model": network_name(args), "batch": args.batch_size, "cpu": cpu,
               "cpu_flags": flags,
               "deterministic": options.deterministic, "jit_compile": options.jit_compile,
               "steps": options.steps, "backend_steps": options.backend_steps, "flops_per_image": flops,
               "ours_fp32_img_s": img_s("ours_fp32"), "ours_bf16_img_s": img_s("ours_bf16"),
               "peer_fp32_img_s": img_s("peer_fp32"), "peer_bf16_img_s": img_s("peer_bf16"),
               "ours_vs_peer_fp32": figures.get("ours_vs_peer_fp32"),
               "ours_vs_peer_bf16": figures.get("ours_vs_peer_bf16"),
               **{f"{name}_{precision}_img_s": column.get(precision, {}).get("img_s")
                  for name, column in columns.items() for precision in precisions},
               "limit_img_s": round(limit, 2), "details": {**figures, **columns}, "seconds": round(seconds),
               "phase_seconds": {name: round(value, 1) for name, value in clock.seconds.items()},
               "load_average": os.getloadavg()}
    print(json.dumps(summary))


def network_name(args):
    if args.model == "wrn":
        return f"WRN-{6 * args.wrn_N + 4}-{args.wrn_k}"
    return f"DenseNet-{args.dn_depth}-{args.dn_growth_rate}"


if __name__ == "__main__":
    main()
