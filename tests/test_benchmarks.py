"""The benchmarks' PyTorch peer is the same network as models/ builds (where PyTorch is installed)."""

import math
import os
import sys

import pytest

from conftest import REPO, train_config, write_archive
from snapshot_ensembles.models.build import build_model

torch = pytest.importorskip("torch", reason="the PyTorch peer needs torch: pip install -r requirements-backends.txt")
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import torch_peer  # noqa: E402


@pytest.mark.parametrize("model_flags", [
    ["--model", "wrn", "--wrn_N", "1", "--wrn_k", "2"],
    ["--model", "wrn", "--wrn_N", "2", "--wrn_k", "1", "--dropout", "0.3"],
    ["--model", "dn", "--dn_depth", "10", "--dn_growth_rate", "4"],
    ["--model", "dn", "--dn_depth", "10", "--dn_growth_rate", "4", "--dn_blocks", "1"],
])
def test_the_pytorch_peer_has_the_keras_networks_weights_and_statistics(model_flags):
    config = train_config(*model_flags)
    network, _ = torch_peer.build(config.model, 10, config.training.dropout)
    torch_peer.check_same_size(torch_peer.sizes(network), build_model(config.model, 10, config.training.dropout))
    trainer = torch_peer.Trainer(network, 4, 0.01, 0.0)
    assert len(trainer.timed_steps(2)) == 2
    probabilities = torch_peer.Predictor(network).predict(torch.rand(3, 32, 32, 3).numpy(), 2)
    assert probabilities.shape == (3, 10)


@pytest.mark.parametrize("bfloat16", [False, True])
def test_the_pytorch_loop_of_the_gpu_check_runs_its_steps_back_to_back(bfloat16):
    network, _ = torch_peer.build(train_config("--wrn_N", "1", "--wrn_k", "1").model, 10)
    trainer = torch_peer.Trainer(network, 4, 0.01, 0.0, bfloat16=bfloat16, device="cpu")
    before = [p.detach().clone() for p in network.parameters()]
    assert trainer.timed_run(3) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))  # it trained


def test_a_different_network_fails_the_size_check():
    network, _ = torch_peer.build(train_config("--wrn_N", "1", "--wrn_k", "2").model, 10)
    wider = train_config("--wrn_N", "1", "--wrn_k", "3").model
    with pytest.raises(AssertionError, match="not the same network"):
        torch_peer.check_same_size(torch_peer.sizes(network), build_model(wider, 10))


def test_the_training_benchmark_alternates_our_flow_and_the_peer_in_blocks(tmp_path):
    from types import SimpleNamespace

    import train_throughput

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    config = train_config("--model", "wrn", "--wrn_N", "1", "--wrn_k", "1", "--batch_size", "8", "--M", "1",
                          "--nb_epoch", "1", "--alpha_zero", "0.01", "--weights_dir", weights_dir, "--no_resume")
    args = SimpleNamespace(**config.to_dict())
    peer = torch_peer.TrainerProcess(args, args.batch_size, args.alpha_zero, args.seed)
    try:
        for mixed in (False, True):  # one peer process serves both precisions, each from a fresh trainer
            peer.start(mixed, 1)  # its start and warm-up overlap ours' build and tracing
            timer = train_throughput.time_our_flow(config, 4, 1, mixed, str(weights_dir), block=2,
                                                   peers={"peer": peer})
            assert len(timer.seconds) == 4 and len(timer.peer_seconds["peer"]) == 4
    finally:
        peer.close()
    assert peer.process.returncode == 0
    assert train_throughput.block_ratio([1, 1, 2, 2], [2, 2, 2, 2], 2) == 1.5


@pytest.mark.parametrize("N, k", [(1, 1), (1, 2), (2, 1)])
def test_the_pytorch_pre_activation_wrn_is_the_keras_one(N, k):
    """Written from Zagoruyko & Komodakis' wide-resnet.lua, it has our pre-activation WRN's weights and statistics."""
    from snapshot_ensembles.models import create_pre_activation_wrn

    network = torch_peer.pre_activation_wrn(10, N, k)
    torch_peer.check_same_size(torch_peer.sizes(network),
                               create_pre_activation_wrn((32, 32, 3), 10, N=N, k=k, verbose=0))
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_pytorch_pre_activation_wrn_has_the_published_layer_order():
    """BN-ReLU before each convolution; the projection reads the normalised input; BN-ReLU before the pooling."""
    network = torch_peer.pre_activation_wrn(10, 1, 2)
    first_block = network[1]
    assert first_block.projected and isinstance(first_block.bn_relu[0], torch.nn.BatchNorm2d)
    assert [type(layer).__name__ for layer in first_block.body] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert [type(layer).__name__ for layer in network[-5:]] == ["BatchNorm2d", "ReLU", "AvgPool2d", "Flatten",
                                                                 "Linear"]
    assert network[2].body[0].stride == (2, 2) and network[2].shortcut.stride == (2, 2)
    assert all(conv.bias is None for conv in network.modules() if isinstance(conv, torch.nn.Conv2d))


@pytest.mark.parametrize("recipe", ["original", "paper"])
def test_the_pytorch_loop_trains_each_recipe_on_cifar_images(tmp_path, recipe):
    import peer_training

    from snapshot_ensembles.data import load_cifar

    folder = tmp_path / "data"
    _, sha = write_archive(str(folder), train_per_batch=8, test_size=12)
    record = peer_training.train(load_cifar("cifar10", str(folder), sha, allow_download=False), recipe, 1, 1,
                                 M=2, nb_epoch=2, alpha_zero=0.05)
    assert len(record["loss"]) == 2 and all(math.isfinite(loss) for loss in record["loss"])
    assert not record["diverged"] and 0.0 <= record["test_accuracy"] <= 1.0
    assert record["network"] == ("pre-activation WRN-10-1" if recipe == "paper" else "original WRN-10-1")


def test_the_pytorch_loop_augmentations_keep_the_images_shape_and_pixels():
    import peer_training

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 32)
    cropped = peer_training.crop_flip(images, generator)
    assert cropped.shape == images.shape
    for image, crop in zip(images, cropped):  # every crop is a shifted (maybe mirrored) window of the padded image
        padded = torch.nn.functional.pad(image, [4] * 4)
        windows = [padded[:, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)
    rotated = peer_training.rotate_shift(images, generator)
    assert rotated.shape == images.shape
    assert set(rotated[0].flatten().tolist()) <= set(images[0].flatten().tolist())  # nearest: no new values
    assert peer_training.cosine_rate(0.1, 0, 4) == 0.1 and peer_training.cosine_rate(0.1, 4, 4) == 0.1
    assert abs(peer_training.cosine_rate(0.1, 2, 4) - 0.05) < 1e-12
