"""Training throughput on whatever accelerator the Keras backend sees, against a plain PyTorch loop on it.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py            # or torch; a few hundred steps on a GPU
    KERAS_BACKEND=jax python benchmarks/gpu_check.py --steps 4 --warmup 2   # a smoke run on a CPU

For WRN-16-4 and DenseNet-40-12 at batch 128, in float32 and mixed precision (float16 with loss scaling on
a GPU, bfloat16 on a CPU: modeling.set_precision): our training step (the network, optimizer and loss of
the training flow, fed by the NumPy input pipeline with the original's augmentation) and the PyTorch loop
of benchmarks/torch_peer.py on the same device (float16 autocast and a GradScaler on a GPU), images/s of
each and their ratio; the input pipeline's own rate; the device's name. Needs PyTorch, a Keras backend
other than TensorFlow, NumPy, SciPy, scikit-learn and h5py; no TensorFlow (README "On a GPU": installing
Keras from carried wheels). docs/performance.md has the figures.
"""

import argparse
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# JAX would otherwise take 75 % of the GPU's memory at its first computation, leaving PyTorch's loop too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from snapshot_ensembles import backend_start, output  # noqa: E402

NETWORKS = {"WRN-16-4": ["--model", "wrn", "--wrn_N", "2", "--wrn_k", "4"],
            "DenseNet-40-12": ["--model", "dn", "--dn_depth", "40", "--dn_growth_rate", "12", "--dn_blocks", "3"]}
BATCH_SIZE = 128


def device_name():
    """(Keras backend, what its first device is): the GPU's name, else the CPU's."""
    import keras

    from measure import cpu_description

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return backend, f"{device.platform.upper()}: {device.device_kind}"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return backend, f"CUDA: {torch.cuda.get_device_name(0)}"
    return backend, f"CPU: {cpu_description()[0]}, {len(os.sched_getaffinity(0))} cores"


def torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_rate(x, y, augment, steps):
    """Images/s of the NumPy input pipeline alone, `steps` batches."""
    from snapshot_ensembles.data.numpy_pipeline import TrainingBatches

    batches = TrainingBatches(x, y, BATCH_SIZE, 0, augment)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in batches.batches(0, steps))
    return count / (time.perf_counter() - start)


def our_rate(config, x, y, steps, warmup, mixed):
    """Images/s of our training step over `steps` steps after `warmup` (compilation included there).

    fit runs epochs of `warmup` steps: the first warms up, the others are timed from the end of the first
    to the end of the last (epoch ends wait for the device: their logs are read).
    """
    import keras

    from snapshot_ensembles import training
    from snapshot_ensembles.data.numpy_pipeline import TrainingBatches
    from snapshot_ensembles.models.build import set_precision

    set_precision(mixed)
    keras.utils.set_random_seed(0)
    try:
        model = training.compile_model(training.build_training_model(config, 10), config, warmup)
        epochs = 1 + math.ceil(steps / warmup)
        batches = TrainingBatches(x, y, BATCH_SIZE, 0, "original").batches(0, epochs * warmup)
        epoch_ends = []
        timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epoch_ends.append(time.perf_counter()))
        model.fit(batches, epochs=epochs, steps_per_epoch=warmup, callbacks=[timer], shuffle=False, verbose=0)
    finally:
        set_precision(False)
    return (epochs - 1) * warmup * BATCH_SIZE / (epoch_ends[-1] - epoch_ends[0])


def peer_rate(config, steps, warmup, mixed, device):
    """Images/s of the plain PyTorch loop of the same network on `device`."""
    import torch_peer

    network, weight_decay = torch_peer.build(config.model, 10, config.training.dropout)
    on_gpu = device != "cpu"
    trainer = torch_peer.Trainer(network, BATCH_SIZE, 0.01, weight_decay, bfloat16=mixed and not on_gpu,
                                 device=device, float16=mixed and on_gpu)
    trainer.timed_run(warmup)
    return steps * BATCH_SIZE / trainer.timed_run(steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per network and precision "
                        "(a few on a CPU)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before them (compilation)")
    parser.add_argument("--networks", nargs="+", choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--precisions", nargs="+", choices=("float32", "mixed"), default=["float32", "mixed"])
    args = parser.parse_args(argv)

    backend_start.start()
    import keras
    import numpy as np

    from measure import load_average
    from snapshot_ensembles import cli
    from snapshot_ensembles.models.build import accelerator_present

    backend, device = device_name()
    if backend == "tensorflow":
        parser.error("it compares the JAX or PyTorch backend with PyTorch: set KERAS_BACKEND=jax or "
                     "KERAS_BACKEND=torch")
    mixed_name = "float16" if accelerator_present() else "bfloat16"
    print(f"Keras {keras.__version__} on {backend}; device {device}; PyTorch loop on {torch_device()}; "
          f"batch {BATCH_SIZE}, {args.steps} timed steps after {args.warmup}; load average {load_average()}")
    rng = np.random.default_rng(0)
    nb_images = BATCH_SIZE * max(8, args.warmup)
    x = rng.integers(0, 256, (nb_images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, nb_images).astype(np.int32)
    pipeline_steps = max(50, args.steps)
    print(f"NumPy input pipeline alone, {pipeline_steps} batches: "
          + ", ".join(f"{augment} {pipeline_rate(x, y, augment, pipeline_steps):,.0f} img/s"
                      for augment in ("original", "paper")))
    print(f"{'network':<16}{'precision':<11}{'ours img/s':>12}{'PyTorch img/s':>15}{'ours / PyTorch':>16}")
    for name in args.networks:
        config = cli.train_config("cifar10", [*NETWORKS[name], "--batch_size", str(BATCH_SIZE)])
        for precision in args.precisions:
            mixed = precision == "mixed"
            ours = our_rate(config, x, y, args.steps, args.warmup, mixed)
            peer = peer_rate(config, args.steps, args.warmup, mixed, torch_device())
            label = mixed_name if mixed else "float32"
            print(f"{name:<16}{label:<11}{ours:>12,.1f}{peer:>15,.1f}{ours / peer:>16.2f}", flush=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    output.set_verbosity(output.QUIET)
    main()
