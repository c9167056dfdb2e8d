"""The paper's diversity measure (appendix D): mean off-diagonal cosine similarity of one image's
semantic features. Lower means more diverse."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.transdiff import TransDiff


def cosine_measure(features: torch.Tensor) -> torch.Tensor:
    """features (B, n, D) -> (B,): (sum(S) - n) / (n (n - 1)), S the rows' cosine similarities."""
    f = F.normalize(features.double(), dim=-1)
    s = f @ f.transpose(1, 2)
    n = f.shape[1]
    return ((s.sum(dim=(1, 2)) - n) / (n * (n - 1))).to(features.dtype)


@torch.no_grad()
def diversity(model: TransDiff, labels: torch.Tensor, refs: torch.Tensor | None = None
              ) -> torch.Tensor:
    """The measure of the features the model gives each label (1-step, or MRAR with `refs`)."""
    return cosine_measure(model.features(model.class_emb(labels), refs))
