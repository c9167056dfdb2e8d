"""Optional TensorBoard logging of a training run (`train --tensorboard`, extra `[tensorboard]`):
the scalars of metrics.jsonl and the sample grids, under runs/<name>/tensorboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransDiffError


class TensorBoardLog:
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise TransDiffError("`tensorboard` needs the tensorboard package: "
                                 "pip install -e \".[tensorboard]\" (or pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, row: dict[str, Any], prefix: str = "") -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        self.writer.flush()

    def image(self, tag: str, path: Path, step: int) -> None:
        from PIL import Image

        with Image.open(path) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
