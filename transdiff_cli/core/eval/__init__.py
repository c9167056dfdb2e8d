"""Evaluation: FID / IS / precision-recall, reference statistics, sweeps, the diversity measure."""
