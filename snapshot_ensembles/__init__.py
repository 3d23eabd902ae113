"""Shared logic behind the Snapshot Ensembles scripts (data, training, prediction, ensembles)."""
