"""The paper's diversity measure (appendix D): mean off-diagonal cosine similarity of one image's
semantic features. Lower means more diverse. For an MRAR model the features depend on the images
it sampled, so the measure draws them first (`mrar_feature_diversity`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..model.transdiff import TransDiff
from ..sampling.loop import model_device_dtype, sample_latents
from ..sampling.settings import SampleSettings


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


@torch.no_grad()
def mrar_feature_diversity(model: TransDiff, labels: Sequence[int], settings: SampleSettings, *,
                           seed: int = 0, num_refs: int = 1, batch_size: int = 16
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The diversity measure of an MRAR model's features, which depend on the images it sampled.
    For every label, `num_refs` MRAR samples are drawn; with their rounds 0..K-2 as references the
    encoder gives the K blocks of features that condition the last image. Returns (per label: the
    measure of all K blocks together, the same feature count as the 1-step model's; per round k and
    label: the measure of block k alone), each averaged over the `num_refs` samples."""
    mc = model.config
    r = mc.ref_tokens
    rounds = settings.rounds
    expanded = [int(y) for y in labels for _ in range(num_refs)]
    full, blocks = [], []
    for start in range(0, len(expanded), batch_size):
        lab = expanded[start:start + batch_size]
        idx = list(range(start, start + len(lab)))
        latents = sample_latents(model, lab, idx, settings, seed)
        refs = torch.cat([model.reference_tokens(s) for s in latents[:-1]], dim=1) if rounds > 1 else None
        y = torch.as_tensor(lab, device=latents[0].device)
        feats = model.features(model.class_emb(y), refs).float()
        full.append(cosine_measure(feats))
        blocks.append(torch.stack([cosine_measure(feats[:, k * r:(k + 1) * r]) for k in range(rounds)]))
    per_label = torch.cat(full).view(len(labels), num_refs).mean(1)
    per_round = torch.cat(blocks, dim=1).view(rounds, len(labels), num_refs).mean(2)
    return per_label.cpu(), per_round.cpu()


def measure_diversity(model: TransDiff, labels: Sequence[int], settings: SampleSettings, *, seed: int = 0,
                      num_refs: int = 1, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The paper's measure per label, and in MRAR mode per round (`mrar_feature_diversity`). In 1-step
    mode (an MRAR checkpoint too: its first block, which sees no references) nothing is sampled."""
    if settings.mode == "mrar":
        return mrar_feature_diversity(model, labels, settings, seed=seed, num_refs=num_refs, batch_size=batch_size)
    device, _ = model_device_dtype(model)
    per_label = [diversity(model, torch.tensor(list(labels[i:i + batch_size]), device=device))
                 for i in range(0, len(labels), batch_size)]
    return torch.cat(per_label).cpu(), None
