"""The README's two recipes as a plain PyTorch loop on real CIFAR-10 images: the independent reference.

`python benchmarks/peer_training.py --data_dir DIR --recipe original|paper --wrn_N 2 --wrn_k 2 ...`
trains the network each recipe trains with train_cifar_10.py, written for PyTorch from its published
definition (benchmarks/torch_peer.py), and prints one JSON line: the mean training loss of every
epoch, whether the loss diverged, and the final network's test accuracy and NLL.

- `original`: the original suite's post-activation WRN (max-pooling between groups, Keras 1's
  Glorot initialisation), plain SGD, the learning rate set once per epoch on the cosine cycles,
  random rotations up to 15 degrees and shifts up to 5/32 (nearest-pixel sampling and fill), pixels
  / 255, batch 128.
- `paper`: Zagoruyko & Komodakis' pre-activation WRN, SGD with Nesterov momentum 0.9 and weight
  decay 5e-4 added to every gradient (Torch's weightDecay, PyTorch's weight_decay), batch 64, the
  cosine learning rate set at every step, per-channel standardisation, 4-pixel zero padding with a
  random 32x32 crop and a horizontal flip of half the images (fb.resnet.torch's CIFAR augmentation).

Nothing of the suite's training code is used: only its CIFAR reader, so that both read the same images.
"""

import argparse
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional  # noqa: E402

import torch_peer  # noqa: E402
from measure import sha256_or_skip  # noqa: E402
from snapshot_ensembles.data import channel_statistics, load_cifar  # noqa: E402
from snapshot_ensembles.errors import UserError  # noqa: E402

RECIPES = {
    "original": dict(network=torch_peer.wide_residual_network, batch_size=128, momentum=0.0, nesterov=False,
                     weight_decay=0.0, per_step=False, augment="rotate_shift", standardize=False),
    "paper": dict(network=torch_peer.pre_activation_wrn, batch_size=64, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, per_step=True, augment="crop_flip", standardize=True),
}
ROTATION_DEGREES, SHIFT_FRACTION, CROP_PADDING = 15.0, 5.0 / 32.0, 4
EVALUATION_BATCH_SIZE = 256


def cosine_rate(alpha_zero, position, cycle_length):
    """The snapshot schedule: alpha_zero / 2 * (cos(pi * (t mod c) / c) + 1)."""
    return alpha_zero / 2.0 * (math.cos(math.pi * (position % cycle_length) / cycle_length) + 1.0)


def rotate_shift(images, generator):
    """Rotate each image about its centre by U(-15, 15) degrees and shift it by U(-5/32, 5/32) of its size."""
    batch = images.shape[0]
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(ROTATION_DEGREES)
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * SHIFT_FRACTION * 2  # [-1, 1] spans the image
    theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), shift[:, 0]], 1),
                         torch.stack([angle.sin(), angle.cos(), shift[:, 1]], 1)], 1)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, mode="nearest", padding_mode="border", align_corners=False)


def crop_flip(images, generator):
    """Zero-pad 4 pixels on each side, take a random 32x32 crop, mirror half of the images."""
    batch, _, height, width = images.shape
    padded = functional.pad(images, [CROP_PADDING] * 4)
    top = torch.randint(0, 2 * CROP_PADDING + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * CROP_PADDING + 1, (batch,), generator=generator)
    mirrored = torch.rand(batch, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(height)[None, :]
    columns = torch.where(mirrored[:, None], torch.arange(width - 1, -1, -1)[None, :], torch.arange(width)[None, :])
    columns = left[:, None] + columns
    index = torch.arange(batch)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


AUGMENTATIONS = {"rotate_shift": rotate_shift, "crop_flip": crop_flip}


def as_tensor(images, standardization):
    """uint8 NHWC images as float32 NCHW (channels_last memory): / 255, or standardised per channel."""
    x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
    if standardization is None:
        x = x / 255.0
    else:
        mean, std = (torch.tensor(values, dtype=torch.float32)[None, :, None, None] for values in standardization)
        x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(model, x, y):
    """(accuracy, mean NLL) of `model` in inference mode."""
    model.eval()
    log_probabilities = torch.cat([functional.log_softmax(model(x[i:i + EVALUATION_BATCH_SIZE]), dim=1)
                                   for i in range(0, len(x), EVALUATION_BATCH_SIZE)])
    labels = torch.from_numpy(np.asarray(y, np.int64))
    accuracy = float((log_probabilities.argmax(1) == labels).float().mean())
    return accuracy, float(functional.nll_loss(log_probabilities, labels))


def train(dataset, recipe, wrn_N, wrn_k, M, nb_epoch, alpha_zero, bn_momentum=0.99, seed=0):
    """Train the recipe's network on `dataset` (snapshot_ensembles.data.Dataset); returns the JSON record."""
    settings = RECIPES[recipe]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = settings["network"](dataset.nb_classes, wrn_N, wrn_k, bn_momentum=bn_momentum)
    model = model.to(memory_format=torch.channels_last)
    standardization = channel_statistics(dataset.x_train) if settings["standardize"] else None
    x_train, x_test = as_tensor(dataset.x_train, standardization), as_tensor(dataset.x_test, standardization)
    y_train = torch.from_numpy(np.asarray(dataset.y_train, np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=alpha_zero, momentum=settings["momentum"],
                                nesterov=settings["nesterov"], weight_decay=settings["weight_decay"])
    augment = AUGMENTATIONS[settings["augment"]]
    batch_size = settings["batch_size"]
    steps = math.ceil(len(x_train) / batch_size)
    epochs_per_cycle = nb_epoch // M
    losses, diverged, start = [], False, time.perf_counter()
    for epoch in range(nb_epoch):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for step in range(steps):
            if settings["per_step"]:
                rate = cosine_rate(alpha_zero, epoch * steps + step, epochs_per_cycle * steps)
            else:
                rate = cosine_rate(alpha_zero, epoch, epochs_per_cycle)
            for group in optimizer.param_groups:
                group["lr"] = rate
            indices = order[step * batch_size:(step + 1) * batch_size]
            images = augment(x_train[indices], generator).contiguous(memory_format=torch.channels_last)
            loss = functional.cross_entropy(model(images), y_train[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(indices)
            if not math.isfinite(total):
                diverged = True
                break
        losses.append(total / len(x_train))
        print(f"epoch {epoch + 1}/{nb_epoch}: loss {losses[-1]:.4f}, {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
        if diverged:
            break
    accuracy, nll = evaluate(model, x_test, dataset.y_test) if not diverged else (None, None)
    return {"recipe": recipe, "network": model_name(recipe, wrn_N, wrn_k), "seed": seed, "loss": losses,
            "diverged": diverged, "test_accuracy": accuracy, "test_nll": nll,
            "seconds": round(time.perf_counter() - start, 1)}


def model_name(recipe, wrn_N, wrn_k):
    kind = "pre-activation WRN" if recipe == "paper" else "original WRN"
    return f"{kind}-{6 * wrn_N + 4}-{wrn_k}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="folder holding the CIFAR-10 archive or its folder")
    parser.add_argument("--data_sha256", type=sha256_or_skip, default=None,
                        help="expected SHA-256 of the archive ('skip': no check; default: the official one)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="original")
    parser.add_argument("--wrn_N", type=int, default=2)
    parser.add_argument("--wrn_k", type=int, default=2)
    parser.add_argument("--M", type=int, default=1)
    parser.add_argument("--nb_epoch", type=int, default=4)
    parser.add_argument("--alpha_zero", type=float, default=0.1)
    parser.add_argument("--bn_momentum", type=float, default=0.99, help="Keras's convention (PyTorch's is 1 - m)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.M < 1 or args.nb_epoch < 1 or args.nb_epoch % args.M:
        parser.error(f"--nb_epoch {args.nb_epoch} must be a positive multiple of --M {args.M}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        dataset = load_cifar("cifar10", args.data_dir, args.data_sha256, allow_download=False)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = train(dataset, args.recipe, args.wrn_N, args.wrn_k, args.M, args.nb_epoch, args.alpha_zero,
                   args.bn_momentum, args.seed)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
