"""Generation: the rectified-flow samplers, settings and their provenance, batched generation to files,
fuse."""
