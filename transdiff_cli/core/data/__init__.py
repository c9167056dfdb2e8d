"""Data: datasets, tokenizers (VAE / pixels), cached latents, class names, images."""
