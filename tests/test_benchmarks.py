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


def test_a_different_network_fails_the_size_check():
    network, _ = torch_peer.build(train_config("--wrn_N", "1", "--wrn_k", "2").model, 10)
    wider = train_config("--wrn_N", "1", "--wrn_k", "3").model
    with pytest.raises(AssertionError, match="not the same network"):
        torch_peer.check_same_size(torch_peer.sizes(network), build_model(wider, 10))
