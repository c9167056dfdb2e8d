"""Core library: model, flow matching, tokenizers, data, checkpoints, training, metrics."""
