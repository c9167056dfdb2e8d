"""Sharing a model: pickle-free export folders (weights, config, model card)."""
