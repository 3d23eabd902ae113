"""Training throughput of our flow against a plain `model.fit` and against the machine's matmul limit.

    python benchmarks/train_throughput.py --model wrn     # WRN-16-4, batch 128
    python benchmarks/train_throughput.py --model dn      # DenseNet-40-12, batch 64

ours:  the training flow's tf.data pipeline (seeded shuffle, vectorised rotation/shift augmentation,
       prefetch) and the snapshot callbacks, as train_cifar_10.py runs them;
plain: the same compiled network fitted on in-memory tensors, no augmentation, no callbacks;
limit: the rate of a large float32 matmul in this process, divided by the network's FLOPs per
       training image (forward + backward = 3 x forward, counted from the layer shapes).
Each rate is measured on the second epoch (the first one traces and warms up). The last line of
output is one JSON object with the figures.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from snapshot import SnapshotCallbackBuilder  # noqa: E402
from snapshot_ensembles import training  # noqa: E402
from snapshot_ensembles.modeling import build_model  # noqa: E402
from snapshot_ensembles.pipeline import evaluation_dataset, training_dataset  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Wall time of the training steps of each epoch (validation and epoch-end saves excluded)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.steps - 1:
            self.seconds.append(time.perf_counter() - self.start)


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


def matmul_flops_per_second(size=2048, repeats=20):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = matmul(a, b)
    result.numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("wrn", "dn"), default="wrn")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed epoch")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()

    argv = ["--model", options.model, "--nb_epoch", "2", "--M", "2", "--weights_dir",
            os.path.join("weights", ".benchmark")]
    args = training.build_parser("cifar10").parse_args(argv)
    training.check_args(args)
    keras.utils.set_random_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    nb_images = args.batch_size * options.steps
    x = rng.integers(0, 256, size=(nb_images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=nb_images).astype(np.int32)

    ours_model = training.compile_model(build_model(args, 10), args, options.steps)
    flops = 3 * forward_flops(ours_model)
    print(f"{ours_model.name}: {ours_model.count_params():,} parameters, {flops / 1e9:.3f} GFLOP per training "
          f"image (3 x {forward_flops(ours_model) / 1e9:.3f} forward), batch {args.batch_size}")

    timer = StepTimer(options.steps)
    callbacks = SnapshotCallbackBuilder(2, 2, args.alpha_zero, weights_dir=args.weights_dir).get_callbacks("Benchmark")
    ours_model.fit(training_dataset(x, y, args.batch_size, options.seed, 0, 2), epochs=2, steps_per_epoch=options.steps,
                   validation_data=evaluation_dataset(x[:args.batch_size], y[:args.batch_size], args.batch_size),
                   callbacks=callbacks + [timer], verbose=0, shuffle=False)
    ours = nb_images / timer.seconds[-1]

    plain_model = training.compile_model(build_model(args, 10), args, options.steps)
    plain_timer = StepTimer(options.steps)
    x_float = tf.constant(x.astype(np.float32) / 255.0)
    plain_model.fit(x_float, tf.constant(y), batch_size=args.batch_size, epochs=2, callbacks=[plain_timer],
                    verbose=0, shuffle=False)
    plain = nb_images / plain_timer.seconds[-1]

    limit = matmul_flops_per_second() / flops
    print(f"ours  {ours:8.1f} img/s")
    print(f"plain {plain:8.1f} img/s   ours / plain = {ours / plain:.3f}")
    print(f"limit {limit:8.1f} img/s   ours / limit = {ours / limit:.3f} (float32 matmul "
          f"{limit * flops / 1e9:.1f} GFLOP/s)")
    print(json.dumps({"model": ours_model.name, "flops_per_image": flops, "ours_img_s": round(ours, 2),
                      "plain_img_s": round(plain, 2), "limit_img_s": round(limit, 2),
                      "ours_vs_plain": round(ours / plain, 4), "ours_vs_limit": round(ours / limit, 4)}))


if __name__ == "__main__":
    main()
