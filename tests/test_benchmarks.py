"""The benchmarks' PyTorch peer is the same network as models/ builds (where PyTorch is installed)."""

import os
import sys

import pytest

from conftest import REPO, train_config
from snapshot_ensembles.modeling import build_model

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
