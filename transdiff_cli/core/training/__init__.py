"""Training: the trainer, its configuration and recipes, run folders, locks and evaluation during
training."""
