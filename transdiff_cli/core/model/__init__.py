"""The network: configuration, the TransDiff model (1-step and MRAR), its layers and CPU kernels,
checkpoint-format conversions."""
