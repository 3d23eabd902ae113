"""Training throughput of our flow against a plain `model.fit` and against the machine's matmul limit.

    python benchmarks/train_throughput.py --model wrn     # WRN-16-4, batch 128
    python benchmarks/train_throughput.py --model dn      # DenseNet-40-12, batch 64

ours:   train_cifar_10.py's training flow, training.fit_snapshot_ensemble after seed_everything: the
        tf.data pipeline (seeded shuffle, vectorised rotation/shift augmentation, prefetch), the
        snapshot callbacks, the divergence guard and the per-epoch run-state checkpoint;
plain:  the same network compiled the same way and fitted on in-memory float32 tensors with no
        augmentation and no callbacks, under the same global settings as ours (TensorFlow op
        determinism on); also timed with Keras's defaults (determinism off) before that;
limit:  the rate of a large float32 matmul in this process, divided by the network's FLOPs per
        training image (forward + backward = 3 x forward, counted from the layer shapes).
Each rate comes from the epochs after the first (which traces and warms up); only the training
steps are timed, validation and epoch-end saves are reported apart. --mixed_precision also trains
ours under the mixed policy (bfloat16 on a CPU) and compares bfloat16 and float32 matmul and
convolution rates; --jit_compile also times the default plain fit compiled with XLA. The last
line of output is one JSON object with the figures.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from snapshot_ensembles import training  # noqa: E402
from snapshot_ensembles.modeling import build_model, set_precision  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Wall time of the training steps of each epoch (validation and epoch-end saves excluded)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.seconds = []
        self.epoch_end_seconds = []  # from the last step to the next epoch: validation and the callbacks

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        if len(self.seconds) > len(self.epoch_end_seconds):
            self.epoch_end_seconds.append(self.start - self.last_step_end)

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.steps - 1:
            self.last_step_end = time.perf_counter()
            self.seconds.append(self.last_step_end - self.start)

    def rate(self, images_per_epoch):
        return images_per_epoch / min(self.seconds[1:])


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


def matmul_flops_per_second(dtype="float32", sizes=(1024, 2048, 4096), seconds=2.0):
    """FLOP/s of the fastest of a few large square matmuls: what dense convolutions approach at best."""
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
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


def timed(function, *tensors, repeats=3):
    """Mean seconds of `function(*tensors)` compiled with tf.function, after one untimed call."""
    step = tf.function(function)
    step(*tensors)
    start = time.perf_counter()
    for _ in range(repeats):
        result = step(*tensors)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    return (time.perf_counter() - start) / repeats


def conv_step(images, kernel):
    """A 3x3 (or 1x1) convolution's forward pass and its gradients for the images and the kernel."""
    with tf.GradientTape() as tape:
        tape.watch([images, kernel])
        loss = tf.reduce_sum(tf.nn.conv2d(images, kernel, 1, "SAME"))
    return tape.gradient(loss, [images, kernel])


def conv_flops_per_second(dtype, batch=32, size=32, channels=64, repeats=5):
    """FLOP/s of a 3x3 convolution's forward and both gradients, as in WRN-16-4's first group."""
    images = tf.cast(tf.random.normal((batch, size, size, channels)), dtype)
    kernel = tf.cast(tf.random.normal((3, 3, channels, channels)) * 0.05, dtype)
    return 3 * 2 * batch * size * size * 9 * channels * channels / timed(conv_step, images, kernel, repeats=repeats)


def op_breakdown(model, batch, repeats=3):
    """Seconds per training step spent in the network's convolutions and in its BatchNormalization +
    ReLU layers, each timed alone (forward and backward, at the layer's shapes and this batch)."""

    def bn_relu_step(images, scale, offset):
        with tf.GradientTape() as tape:
            tape.watch([images, scale, offset])
            mean, variance = tf.nn.moments(images, axes=[0, 1, 2])
            normed = tf.nn.batch_normalization(images, mean, variance, offset, scale, 1e-3)
            loss = tf.reduce_sum(tf.nn.relu(normed))
        return tape.gradient(loss, [images, scale, offset])

    conv_seconds = bn_seconds = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            images = tf.random.normal((batch, *layer.input.shape[1:]))
            conv_seconds += timed(conv_step, images, tf.random.normal(layer.kernel.shape), repeats=repeats)
        elif isinstance(layer, keras.layers.BatchNormalization):
            images = tf.random.normal((batch, *layer.input.shape[1:]))
            channels = images.shape[-1]
            bn_seconds += timed(bn_relu_step, images, tf.ones((channels,)), tf.zeros((channels,)), repeats=repeats)
    return conv_seconds, bn_seconds


def compiled_model(args, steps, jit_compile=False):
    model = training.compile_model(build_model(args, 10, args.dropout), args, steps)
    if jit_compile:  # same optimizer and loss, compiled with XLA
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
    return model


def time_our_flow(args, splits, steps, epochs, weights_dir):
    """Images/s of fit_snapshot_ensemble's training steps, and its mean epoch-end seconds."""
    args = argparse.Namespace(**dict(vars(args), nb_epoch=epochs, M=epochs))  # a snapshot every epoch
    model = compiled_model(args, steps)
    timer = StepTimer(steps)
    training.fit_snapshot_ensemble(model, splits, args, "Benchmark", extra_callbacks=[timer])
    shutil.rmtree(weights_dir, ignore_errors=True)
    os.makedirs(weights_dir)
    return timer.rate(steps * args.batch_size), float(np.mean(timer.epoch_end_seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("wrn", "dn"), default="wrn")
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed epoch (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per run, the first untimed (default: %(default)s)")
    parser.add_argument("--mixed_precision", action="store_true", help="also time ours with mixed precision")
    parser.add_argument("--mixed_steps", type=int, default=2, help="steps per epoch of the mixed run (default: "
                        "%(default)s)")
    parser.add_argument("--jit_compile", action="store_true",
                        help="also time the plain fit with Keras's defaults compiled with XLA")
    parser.add_argument("--profile", action="store_true",
                        help="also time the network's convolutions and BatchNormalization+ReLU layers alone")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    if options.epochs < 2 or options.steps < 1 or options.mixed_steps < 1:
        parser.error("--epochs must be at least 2 (the first one is not timed); --steps and --mixed_steps at least 1")

    weights_dir = tempfile.mkdtemp(prefix="train-benchmark-")
    argv = ["--model", options.model, "--nb_epoch", str(options.epochs), "--M", str(options.epochs),
            "--weights_dir", weights_dir, "--seed", str(options.seed), "--no_resume",
            "--alpha_zero", "0.01"]  # random images and labels: a small rate keeps the losses finite
    args = training.build_parser("cifar10").parse_args(argv)
    training.check_args(args)
    rng = np.random.default_rng(options.seed)
    nb_images = args.batch_size * options.steps
    x = rng.integers(0, 256, size=(nb_images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=nb_images).astype(np.int32)
    splits = dict(x_train=x, y_train=y, x_val=x[:args.batch_size], y_val=y[:args.batch_size])

    def time_plain_fit(jit_compile=False):
        model = compiled_model(args, options.steps, jit_compile)
        timer = StepTimer(options.steps)
        model.fit(x_float, tf.constant(y), batch_size=args.batch_size, epochs=options.epochs, callbacks=[timer],
                  verbose=0, shuffle=False)
        return timer.rate(nb_images), model

    x_float = tf.constant(x.astype(np.float32) / 255.0)
    # Keras's defaults first: op determinism, which our flow switches on, cannot be switched off again,
    # and with it Keras refuses XLA.
    keras.utils.set_random_seed(options.seed)
    plain_default, model = time_plain_fit(options.jit_compile)
    flops = 3 * forward_flops(model)
    print(f"{model.name}: {model.count_params():,} parameters, {flops / 1e9:.3f} GFLOP per training "
          f"image (3 x {forward_flops(model) / 1e9:.3f} forward), batch {args.batch_size}, "
          f"{options.steps} timed steps")
    figures = {}
    if options.jit_compile:
        figures["plain_xla_img_s"] = round(plain_default, 2)
        plain_default, model = time_plain_fit(False)
    del model

    try:
        training.seed_everything(args.seed)  # as train_cifar_10.py does: ours and plain under the same settings
        plain, _ = time_plain_fit()
        ours, epoch_end = time_our_flow(args, splits, options.steps, options.epochs, weights_dir)
        if options.mixed_precision:
            policy = set_precision(True)
            # Few steps: on a CPU without native bfloat16 a mixed step takes many times a float32 one.
            mixed_splits = {k: v[:args.batch_size * options.mixed_steps] if k.endswith("train") else v
                            for k, v in splits.items()}
            mixed, _ = time_our_flow(args, mixed_splits, options.mixed_steps, 2, weights_dir)
            set_precision(False)
            figures.update(mixed_policy=policy, mixed_img_s=round(mixed, 2), mixed_vs_float32=round(mixed / ours, 4))
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)

    matmul = matmul_flops_per_second()
    limit = matmul / flops
    print(f"ours  {ours:8.1f} img/s   (epoch end: validation + callbacks {epoch_end:.2f} s per epoch)")
    print(f"plain {plain:8.1f} img/s   ours / plain = {ours / plain:.3f} (plain fit, op determinism on as in ours)")
    print(f"      {plain_default:8.1f} img/s   plain fit with Keras's defaults (op determinism off)")
    if options.jit_compile:
        print(f"      {figures['plain_xla_img_s']:8.1f} img/s   the same with XLA (jit_compile=True): "
              f"{figures['plain_xla_img_s'] / plain_default:.3f} x")
    print(f"limit {limit:8.1f} img/s   ours / limit = {ours / limit:.3f} (float32 matmul {matmul / 1e9:.1f} GFLOP/s)")
    if "mixed_img_s" in figures:
        bf16 = matmul_flops_per_second("bfloat16")
        conv32, conv16 = conv_flops_per_second("float32"), conv_flops_per_second("bfloat16")
        print(f"mixed {figures['mixed_img_s']:8.1f} img/s   mixed / float32 = {figures['mixed_vs_float32']:.3f} "
              f"({figures['mixed_policy']})")
        print(f"  matmul: bfloat16 {bf16 / 1e9:.1f} GFLOP/s = {bf16 / matmul:.2f} x float32; "
              f"3x3 conv 64->64 forward+backward: float32 {conv32 / 1e9:.1f}, bfloat16 {conv16 / 1e9:.1f} GFLOP/s "
              f"= {conv16 / conv32:.2f} x float32")
        figures.update(bf16_matmul_vs_float32=round(bf16 / matmul, 4), bf16_conv_vs_float32=round(conv16 / conv32, 4))
    if options.profile:
        conv_seconds, bn_seconds = op_breakdown(build_model(args, 10, args.dropout), args.batch_size)
        step_seconds = args.batch_size / ours
        print(f"profile of one step of {args.batch_size} ({step_seconds:.2f} s in ours): convolutions alone "
              f"{conv_seconds:.2f} s ({flops * args.batch_size / conv_seconds / 1e9:.0f} GFLOP/s), "
              f"BatchNormalization + ReLU alone {bn_seconds:.2f} s, "
              f"the rest {step_seconds - conv_seconds - bn_seconds:.2f} s")
        figures.update(step_seconds=round(step_seconds, 3), conv_seconds=round(conv_seconds, 3),
                       bn_relu_seconds=round(bn_seconds, 3))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak_mb:.0f} MiB")
    print(json.dumps({"model": network_name(args), "flops_per_image": flops, "ours_img_s": round(ours, 2),
                      "plain_img_s": round(plain, 2), "limit_img_s": round(limit, 2),
                      "ours_vs_plain": round(ours / plain, 4), "ours_vs_limit": round(ours / limit, 4),
                      "plain_default_img_s": round(plain_default, 2), **figures, "peak_rss_mb": round(peak_mb, 1)}))


def network_name(args):
    if args.model == "wrn":
        return f"WRN-{6 * args.wrn_N + 4}-{args.wrn_k}"
    return f"DenseNet-{args.dn_depth}-{args.dn_growth_rate}"


if __name__ == "__main__":
    main()
