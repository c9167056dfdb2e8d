"""TransDiff toolkit: train, sample and evaluate TransDiff (AR transformer + rectified-flow decoder)."""

__version__ = "0.1.0"
