"""TransDiff toolkit: train, sample and evaluate TransDiff (AR transformer + rectified-flow decoder).

`from transdiff_cli import TransDiffPipeline` is the Python API; it is imported on first use so that
`import transdiff_cli` (and `transdiff --version`) stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DiversityOutput", "FuseOutput", "TransDiffOutput", "TransDiffPipeline", "__version__"]

if TYPE_CHECKING:
    from .pipeline import DiversityOutput, FuseOutput, TransDiffOutput, TransDiffPipeline


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'transdiff_cli' has no attribute {name!r}")
