"""The peer a user would pick instead of this suite: the same networks trained by a plain PyTorch loop.

The networks mirror models/ layer for layer (bias use, pooling, BatchNormalization's epsilon and
momentum, dropout, weight decay); `check_same_size` compares their parameter counts with the Keras
model's. PyTorch runs channels_last (its fast CPU layout for convolutions), float32 or bfloat16
under torch.autocast, with SGD and cross-entropy on the logits (Keras's softmax + cross-entropy).
Imported by the benchmarks only when PyTorch is installed; the training peer runs in a process of
its own (TrainerProcess).
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from snapshot_ensembles.models.batch_norm import KERAS1_EPSILON  # noqa: E402
from snapshot_ensembles.models.build import DEFAULT_DROPOUT  # noqa: E402

DENSENET_WEIGHT_DECAY = 1e-4  # models/dense_net.py: L2(1e-4) on every weight, gradient 2e-4 x w


def _bn(channels, keras_momentum=0.99):
    """BatchNormalization as Keras's with `keras_momentum` (PyTorch's momentum weighs the new batch)."""
    return nn.BatchNorm2d(channels, eps=KERAS1_EPSILON, momentum=1.0 - keras_momentum)


class ResidualBlock(nn.Module):
    """models/wide_residual_net.residual_block: conv-BN-ReLU-(dropout)-conv-BN-ReLU + shortcut."""

    def __init__(self, in_channels, filters, dropout, bn_momentum=0.99):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, filters, 1) if in_channels != filters else nn.Identity()
        self.body = nn.Sequential(nn.Conv2d(in_channels, filters, 3, padding=1), _bn(filters, bn_momentum), nn.ReLU(),
                                  *([nn.Dropout(dropout)] if dropout > 0 else []),
                                  nn.Conv2d(filters, filters, 3, padding=1), _bn(filters, bn_momentum), nn.ReLU())

    def forward(self, x):
        return self.shortcut(x) + self.body(x)


def _glorot_init(model):
    """Keras 1's defaults, with which the original's networks trained: Glorot-uniform weights, zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def wide_residual_network(nb_classes, N, k, dropout=0.0, bn_momentum=0.99):
    """models/wide_residual_net.create_wide_residual_network, logits out."""
    layers = [nn.Conv2d(3, 16, 3, padding=1), _bn(16, bn_momentum), nn.ReLU()]
    channels = 16
    for group, width in enumerate((16 * k, 32 * k, 64 * k)):
        if group > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(N):
            layers.append(ResidualBlock(channels, width, dropout, bn_momentum))
            channels = width
    layers += [nn.AvgPool2d(8), nn.Flatten(), nn.Linear(channels, nb_classes)]
    return _glorot_init(nn.Sequential(*layers))


class PreActivationBlock(nn.Module):
    """wide_basic of Zagoruyko & Komodakis' wide-resnet.lua: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut.

    Where the width changes, the shortcut is a 1x1 convolution of stride `stride`, and the first
    BN-ReLU comes before the split, so the shortcut reads the normalised input; elsewhere the
    shortcut is the identity of the raw input. Convolutions have no bias (MSRinit removes it).
    """

    def __init__(self, in_channels, filters, stride, dropout, bn_momentum):
        super().__init__()
        self.projected = in_channels != filters
        self.bn_relu = nn.Sequential(_bn(in_channels, bn_momentum), nn.ReLU())
        self.shortcut = nn.Conv2d(in_channels, filters, 1, stride, bias=False) if self.projected else None
        self.body = nn.Sequential(nn.Conv2d(in_channels, filters, 3, stride, padding=1, bias=False),
                                  _bn(filters, bn_momentum), nn.ReLU(),
                                  *([nn.Dropout(dropout)] if dropout > 0 else []),
                                  nn.Conv2d(filters, filters, 3, 1, padding=1, bias=False))

    def forward(self, x):
        activated = self.bn_relu(x)
        if self.projected:
            return self.body(activated) + self.shortcut(activated)
        return self.body(activated) + x


def _msr_init(model):
    """wide-resnet.lua's MSRinit: conv weights normal(0, sqrt(2 / (kH kW nOutputPlane))); Linear bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)  # its weights keep Torch's uniform(+-1/sqrt(fan_in)), PyTorch's default
    return model


def pre_activation_wrn(nb_classes, N, k, dropout=0.0, bn_momentum=0.99):
    """Zagoruyko & Komodakis' WRN-(6N+4)-k (wide-resnet.lua), logits out: conv3x3 to 16, three groups of N
    wide_basic blocks at 16k, 32k, 64k channels (the first block of groups 2 and 3 with stride 2), then
    BN-ReLU, 8x8 average pooling and a linear layer."""
    layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False)]
    channels = 16
    for group, width in enumerate((16 * k, 32 * k, 64 * k)):
        for block in range(N):
            layers.append(PreActivationBlock(channels, width, 2 if group > 0 and block == 0 else 1, dropout,
                                             bn_momentum))
            channels = width
    layers += [_bn(channels, bn_momentum), nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(), nn.Linear(channels, nb_classes)]
    return _msr_init(nn.Sequential(*layers))


def _bn_relu_conv(in_channels, filters, size, dropout):
    return [_bn(in_channels), nn.ReLU(), nn.Conv2d(in_channels, filters, size, padding=size // 2, bias=False),
            *([nn.Dropout(dropout)] if dropout else [])]


class DenseLayer(nn.Module):
    """models/dense_net.conv_block, concatenated to its input as dense_block does."""

    def __init__(self, in_channels, growth_rate, dropout):
        super().__init__()
        self.body = nn.Sequential(*_bn_relu_conv(in_channels, growth_rate, 3, dropout))

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


def dense_net(nb_classes, depth, nb_dense_block, growth_rate, dropout=0.0, nb_filter=16):
    """models/dense_net.create_dense_net, logits out (its L2 decay is the optimizer's weight_decay)."""
    nb_layers = (depth - 4) // 3
    layers = [nn.Conv2d(3, nb_filter, 3, padding=1, bias=False)]
    for block in range(nb_dense_block):
        for _ in range(nb_layers):
            layers.append(DenseLayer(nb_filter, growth_rate, dropout))
            nb_filter += growth_rate
        if block < nb_dense_block - 1:
            layers += [*_bn_relu_conv(nb_filter, nb_filter, 1, dropout), nn.AvgPool2d(2)]
    layers += [_bn(nb_filter), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nb_filter, nb_classes)]
    return nn.Sequential(*layers)


def build(args, nb_classes, dropout=None):
    """The PyTorch twin of modeling.build_model(args, nb_classes, dropout), and its weight decay."""
    if dropout is None:
        dropout = DEFAULT_DROPOUT[args.model]
    if args.model == "wrn":
        return wide_residual_network(nb_classes, args.wrn_N, args.wrn_k, dropout), 0.0
    return (dense_net(nb_classes, args.dn_depth, args.dn_blocks, args.dn_growth_rate, dropout),
            2 * DENSENET_WEIGHT_DECAY)


def sizes(torch_model):
    """(weights, BatchNormalization statistics) of a PyTorch network, counted as Keras counts them."""
    weights = sum(p.numel() for p in torch_model.parameters())
    statistics = sum(b.numel() for name, b in torch_model.named_buffers()
                     if name.endswith(("running_mean", "running_var")))
    return weights, statistics


def check_same_size(torch_sizes, keras_model):
    """Raise AssertionError unless both networks have as many weights and BatchNormalization statistics."""
    keras_sizes = (sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights),
                   sum(int(np.prod(w.shape)) for w in keras_model.non_trainable_weights))
    assert tuple(torch_sizes) == keras_sizes, (
        f"the PyTorch peer has {torch_sizes[0]:,} weights and {torch_sizes[1]:,} BatchNormalization statistics, "
        f"the Keras network {keras_sizes[0]:,} and {keras_sizes[1]:,}: they are not the same network")


class Trainer:
    """A plain PyTorch training loop on one in-memory batch: SGD, cross-entropy, channels_last.

    On `device` (a CPU, or a GPU for benchmarks/gpu_check.py); mixed precision as torch.autocast: bfloat16, or
    float16 with a GradScaler's loss scaling (a GPU's, as Keras's mixed_float16 policy).
    """

    def __init__(self, model, batch_size, learning_rate, weight_decay, bfloat16=False, seed=0, device="cpu",
                 float16=False):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = model.to(device=self.device, memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        self.autocast_dtype = torch.float16 if float16 else torch.bfloat16 if bfloat16 else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=float16)
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(batch_size, 3, 32, 32, generator=generator).contiguous(
            memory_format=torch.channels_last).to(self.device)
        self.labels = torch.randint(0, model[-1].out_features, (batch_size,), generator=generator).to(self.device)

    def _step(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            loss = nn.functional.cross_entropy(self.model(self.images), self.labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def step(self):
        return float(self._step().detach())

    def timed_steps(self, count):
        """Seconds of each of `count` steps."""
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            self.step()
            seconds.append(time.perf_counter() - start)
        return seconds

    def timed_run(self, count):
        """Seconds of `count` steps queued back to back, as a training loop runs them on a GPU: one wait at the end."""
        start = time.perf_counter()
        for _ in range(count):
            loss = self._step()
        float(loss.detach())
        return time.perf_counter() - start


class Predictor:
    """The peer's inference: eval mode, no autograd, channels_last, optionally bfloat16 autocast."""

    def __init__(self, model, bfloat16=False):
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.bfloat16 = bfloat16

    @torch.inference_mode()
    def predict(self, images, batch_size):
        """Softmax probabilities of `images` (N, 32, 32, 3 float32 in [0, 1]), batch by batch."""
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)  # NHWC = channels_last
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
                outputs.append(torch.softmax(self.model(batch).float(), dim=1))
        return torch.cat(outputs).numpy()


MODEL_FLAGS = ("model", "wrn_N", "wrn_k", "dn_depth", "dn_growth_rate", "dn_blocks", "dropout")


class TrainerProcess:
    """A Trainer in a process of its own, driven block by block from the benchmark.

    TensorFlow's thread pools then never share a process with PyTorch's, so neither waits on the
    other's idle threads. One process serves every precision: `start` asks for a fresh, seeded
    Trainer and its warm-up steps without waiting, so that the process starts and warms up while
    the benchmark builds and traces its own model; `wait_started` collects both replies.
    """

    def __init__(self, args, batch_size, learning_rate, seed=0):
        spec = {name: getattr(args, name) for name in MODEL_FLAGS}
        spec.update(batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=dict(os.environ, KERAS_BACKEND="torch"))  # no TensorFlow in there

    def _ask(self, request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch peer process ended (exit {self.process.wait()})")
        return json.loads(line)

    def start(self, bfloat16, warmup):
        """Ask for a fresh Trainer in this precision and `warmup` untimed steps; returns at once."""
        self._ask({"bfloat16": bfloat16})
        self._ask({"steps": warmup})

    def wait_started(self, keras_model):
        """Wait for `start`'s trainer and warm-up; AssertionError unless its network is `keras_model`'s size."""
        check_same_size(self._reply(), keras_model)
        self._reply()

    def timed_steps(self, count):
        self._ask({"steps": count})
        return self._reply()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def serve(spec):
    """The TrainerProcess side: a request per line on stdin, a JSON reply per line on stdout.

    {"bfloat16": b}: a new Trainer, its network seeded anew; replies with the network's sizes.
    {"steps": n}: n steps of that Trainer; replies with the seconds of each.
    """
    args = argparse.Namespace(**{name: spec[name] for name in MODEL_FLAGS})
    trainer = None
    for line in sys.stdin:
        request = json.loads(line)
        if "bfloat16" in request:
            torch.manual_seed(spec["seed"])  # the same initial weights for every precision
            network, weight_decay = build(args, 10, spec["dropout"])
            trainer = Trainer(network, spec["batch_size"], spec["learning_rate"], weight_decay, request["bfloat16"],
                              spec["seed"])
            print(json.dumps(sizes(network)), flush=True)
        else:
            print(json.dumps(trainer.timed_steps(request["steps"])), flush=True)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
