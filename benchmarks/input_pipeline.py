"""The input pipelines' own rate: training batches per second with each augmentation, no network.

    python benchmarks/input_pipeline.py [--images 50000] [--batch_size 128] [--epochs 1] [--repeats 3]

On CIFAR-sized synthetic data (uint8 32x32x3 images), it times the epochs of the tf.data pipeline (the
TensorFlow backend's; skipped, saying so, where TensorFlow is not installed) and of the NumPy pipeline (the
JAX and PyTorch backends'), as fit consumes them: tf.data's tensors, the NumPy pipeline's arrays. Prints
images/s (the best of --repeats passes: other jobs on the machine only ever slow a pass), the NumPy
pipeline's rate over tf.data's, the CPU, its flags and the load average. Run it without `nice`: the figure
is the pipeline's, not the scheduler's. docs/performance.md has the figures.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from measure import cpu_description, describe_cpu, load_average  # noqa: E402
from snapshot_ensembles import backend_start  # noqa: E402

AUGMENTATIONS = ("original", "paper", "none")


def synthetic_cifar(nb_images, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (nb_images, 32, 32, 3), dtype=np.uint8)
    return x, rng.integers(0, 10, nb_images).astype(np.int32)


def standardization_for(augment, x):
    """The paper's crop and flip go with per-channel standardisation (recipes.PAPER); the others with [0, 1]."""
    if augment != "paper":
        return None
    from snapshot_ensembles.data import channel_statistics

    return channel_statistics(x)


def time_epochs(make_batches, nb_images, epochs, repeats):
    """Images/s of the best of `repeats` passes over `epochs` epochs of make_batches(epochs)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(len(labels) for _, labels in make_batches(epochs))
        seconds = time.perf_counter() - start
        assert count == nb_images * epochs, (count, nb_images * epochs)
        best = max(best, count / seconds)
    return best


def tf_data_rate(x, y, augment, batch_size, epochs, repeats):
    """tf.data's rate, or None where TensorFlow is not installed."""
    try:
        with backend_start.native_stderr_hidden():
            from snapshot_ensembles.data import tf_pipeline
    except ImportError:
        return None
    standardization = standardization_for(augment, x)
    return time_epochs(lambda n: tf_pipeline.training_dataset(x, y, batch_size, 0, 0, n, augment, standardization),
                       len(x), epochs, repeats)


def numpy_rate(x, y, augment, batch_size, epochs, repeats, workers):
    from snapshot_ensembles.data import numpy_pipeline

    standardization = standardization_for(augment, x)

    def epochs_of_batches(n):
        batches = numpy_pipeline.TrainingBatches(x, y, batch_size, 0, augment, standardization)
        return batches.batches(0, n * batches.steps_per_epoch, workers=workers)

    return time_epochs(epochs_of_batches, len(x), epochs, repeats)


def main(argv=None):
    backend_start.start()  # the NumPy pipeline's evaluation batches are Keras PyDatasets
    from snapshot_ensembles.data.numpy_pipeline import WORKERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50000, help="synthetic training images (CIFAR's 50,000)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--workers", type=int, default=WORKERS, help="the NumPy pipeline's threads")
    parser.add_argument("--augment", choices=AUGMENTATIONS, nargs="+", default=list(AUGMENTATIONS))
    args = parser.parse_args(argv)

    name, flags = cpu_description()
    print(f"CPU: {describe_cpu(name, flags, len(os.sched_getaffinity(0)))}; load average {load_average()}")
    print(f"{args.images:,} synthetic 32x32x3 uint8 images, batch {args.batch_size}, best of {args.repeats} "
          f"pass(es) of {args.epochs} epoch(s); NumPy pipeline: {args.workers} thread(s)")
    x, y = synthetic_cifar(args.images)
    print(f"{'augmentation':<14}{'tf.data img/s':>15}{'NumPy img/s':>14}{'NumPy / tf.data':>17}")
    results = {}
    for augment in args.augment:
        tf_rate = tf_data_rate(x, y, augment, args.batch_size, args.epochs, args.repeats)
        ours = numpy_rate(x, y, augment, args.batch_size, args.epochs, args.repeats, args.workers)
        results[augment] = (tf_rate, ours)
        tf_column = f"{tf_rate:>15,.0f}" if tf_rate else f"{'(no TF)':>15}"
        ratio = f"{ours / tf_rate:>17.2f}" if tf_rate else f"{'':>17}"
        print(f"{augment:<14}{tf_column}{ours:>14,.0f}{ratio}")
    print(f"load average after: {load_average()}")
    return results


if __name__ == "__main__":
    main()
