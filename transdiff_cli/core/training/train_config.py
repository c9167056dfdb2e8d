"""Training configuration and its per-size defaults (the paper's recipe for B/L/H, a CPU recipe
for the small sizes, measured in docs/architecture.md#sizing-the-cpu-default)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import TransDiffError
from ..schema import FLAG, TRAIN_SCHEMA, Sources, check_config, fail, named, with_new_keys


@dataclass
class TrainConfig:
    data: str = "digits"
    vae: str | None = None  # tokenizer for image data: pixels | kl16:PATH | diffusers:DIR
    image_size: int | None = None
    batch_size: int = 128  # global batch (all ranks, before gradient accumulation is split)
    grad_accum: int = 1
    base_lr: float = 1e-3  # lr = base_lr * global batch / 256
    lr: float | None = None  # absolute lr; overrides base_lr
    schedule: str = "constant"  # constant | cosine (after warm-up)
    warmup_steps: int | None = 50
    warmup_epochs: float | None = None  # warm-up in epochs (the authors' unit) instead of steps
    min_lr: float = 0.0
    weight_decay: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 3.0
    ema_rate: float = 0.999
    ema_warmup: bool = True  # rate min(ema_rate, (1 + step) / (10 + step)): useful EMA in short runs
    max_steps: int | None = 600
    epochs: float | None = None
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    sample_every: int | None = None  # default: with every checkpoint
    keep_last: int = 2
    num_workers: int = 0
    grid_classes: int = 10
    grid_per_class: int = 8
    grid_sampling_steps: int | None = None  # sampler steps of the grids; default: model's
    eval_every: int | None = None  # FID of the EMA model every N steps (None or 0: never)
    eval_images: int = 1000  # class-balanced images per evaluation
    eval_ref: str | None = None  # reference: folder, .npz (ADM), encode-latents folder or "digits"
    eval_features: str = "inception"  # inception | digits
    eval_inception_weights: str | None = None
    tensorboard: bool = False  # also log scalars and sample grids to runs/<name>/tensorboard
    only_train_diff: bool = False  # train the diffusion decoder only (the paper's 512 recipe)
    groups: str | None = None  # MRAR: JSON-lines file of fixed same-class groups (default: random)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    def warmup_for(self, steps_per_epoch: int) -> int:
        """Warm-up in optimizer steps, whichever unit it was given in."""
        if self.warmup_epochs is not None:
            return round(self.warmup_epochs * steps_per_epoch)
        return self.warmup_steps or 0

    def __post_init__(self) -> None:
        # where each key the user set came from (for messages); not part of the configuration
        self._sources: dict[str, str] = {}
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_config(fields, TRAIN_SCHEMA, "training").items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, sources: Sources | None = None, where: str | None = None) -> TrainConfig:
        """Checked key by key against the schema (`validate` checks the relations); `sources`
        says where each key came from, `where` names a file all of them came from."""
        d, sources = with_new_keys(d), with_new_keys(sources)  # old key names, in run folders and YAML files
        values = check_config(d, TRAIN_SCHEMA, "training", sources, where)
        src = {**{k: where for k in values}, **(sources or {})} if where else dict(sources or {})
        config = cls(**values)
        config._sources = src
        return config

    def validate(self) -> None:
        """Relations between keys (each key's own range is in schema.TRAIN_SCHEMA)."""
        src = self._sources
        if self.max_steps is not None and self.epochs is not None:
            raise TransDiffError(f"give either {named('max_steps', self.max_steps, src)} or "
                                 f"{named('epochs', self.epochs, src)}, not both")
        if self.max_steps is None and self.epochs is None:
            raise TransDiffError("give `max_steps` or `epochs`")
        if self.warmup_steps is not None and self.warmup_epochs is not None:
            raise TransDiffError(f"give either {named('warmup_steps', self.warmup_steps, src)} or "
                                 f"{named('warmup_epochs', self.warmup_epochs, src)}, not both")
        # a warm-up the user set must end before the run does; a preset's is cut short by a short
        # run, and so is a file's when the run length is a flag (a quick trial of a recipe file)
        for warm, run in (("warmup_steps", "max_steps"), ("warmup_epochs", "epochs")):
            w, r = getattr(self, warm), getattr(self, run)
            trial = src.get(run) == FLAG and src.get(warm) != FLAG
            if w and r is not None and w >= r and warm in src and not trial:
                raise fail(warm, w, src, f"must be shorter than the run, {named(run, r, src)}")
        if self.eval_every:
            if not self.eval_ref:
                raise TransDiffError("`eval_every` needs a reference: `eval_ref` DIR|NPZ|digits (e.g. ADM's "
                                     "VIRTUAL_imagenet256_labeled.npz)")
            if self.eval_images < 2:
                raise fail("eval_images", self.eval_images, src, "must be at least 2")


# Per-size training defaults. B/L/H: the authors' README recipe for L (docs/architecture.md#recipes): AdamW 0.9/0.95,
# wd 0.02, blr 1e-4 (lr = blr x batch / 256), global batch 2048, 800 epochs with 100 warm-up epochs,
# constant lr, grad clip 3, EMA 0.9999 without warm-up; `diffusion_batch_mul` 4 is the model
# preset's. The paper gives no recipe for B and H: they follow L's. tiny: the CPU recipe (digits 8x8,
# batch 128, lr 5e-4, about 600 steps; docs/architecture.md#sizing-the-cpu-default).
PAPER_1STEP: dict[str, Any] = dict(batch_size=2048, base_lr=1e-4, lr=None, schedule="constant",
                                   warmup_steps=None, warmup_epochs=100, max_steps=None, epochs=800,
                                   ema_rate=0.9999, ema_warmup=False, ckpt_every=5000,
                                   data="imagenet-latents/", grid_classes=8)
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(batch_size=128, base_lr=1e-3, warmup_steps=50, max_steps=630, ema_rate=0.999,
                 ckpt_every=200),
    "S": dict(batch_size=128, base_lr=4e-4, warmup_steps=200, max_steps=5000, ema_rate=0.999,
              ckpt_every=1000),
    "B": dict(PAPER_1STEP),
    "L": dict(PAPER_1STEP),
    "H": dict(PAPER_1STEP),
}
# MRAR fine-tuning from the 1-step model. B/L/H: the authors' recipe (40 epochs, 10 warm-up epochs,
# lr 5e-5 absolute, global batch 2048; `diffusion_batch_mul` 2 comes from convert.mrar_config). The
# EMA continues the source checkpoint's EMA, so it has no warm-up (a warm-up would discard it); the
# small sizes use a faster rate so their short runs still move it. Small sizes at half their lr.
PAPER_FINETUNE: dict[str, Any] = dict(batch_size=2048, lr=5e-5, warmup_steps=None, warmup_epochs=10,
                                      max_steps=None, epochs=40, ema_rate=0.9999, ema_warmup=False)
FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base_lr=5e-4, warmup_steps=20, max_steps=300, ckpt_every=100, ema_rate=0.99,
                 ema_warmup=False),
    "S": dict(base_lr=2e-4, warmup_steps=50, max_steps=2000, ckpt_every=500, ema_warmup=False),
    "B": dict(PAPER_FINETUNE),
    "L": dict(PAPER_FINETUNE),
    "H": dict(PAPER_FINETUNE),
}

# Decoder fine-tuning at a new resolution (`train --init-from --only-train-diff`). L: the authors'
# 512 recipe (docs/architecture.md#recipes): 150 epochs, 10 warm-up epochs (6250 steps of ImageNet at batch 2048),
# lr 1e-4 absolute, EMA 0.999; the paper gives no other numbers, so B and H use L's. The CPU
# sizes keep their batch and train half their steps at half their lr, warm-up 1/15 of the run
# as in the recipe.
L_512 = dict(batch_size=2048, lr=1e-4, warmup_steps=6250, warmup_epochs=None, max_steps=None, epochs=150,
             ema_rate=0.999, ckpt_every=5000)
DECODER_FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base_lr=5e-4, warmup_steps=20, max_steps=300, ckpt_every=100),
    "S": dict(base_lr=2e-4, warmup_steps=170, max_steps=2500, ckpt_every=500),
    "B": L_512, "L": L_512, "H": L_512,
}

# The default digits run measures itself cheaply (200 images, the digits classifier's features) three
# times, so its FID curve shows the model learning; only keys the user did not set are filled in.
DIGITS_EVAL: dict[str, Any] = dict(eval_every=210, eval_images=200, eval_ref="digits", eval_features="digits")


def train_defaults(size: str, finetune: bool = False, decoder_only: bool = False) -> dict[str, Any]:
    base = dict(TRAIN_PRESETS.get(size, TRAIN_PRESETS["tiny"]))
    if finetune or decoder_only:
        table = DECODER_FINETUNE_PRESETS if decoder_only else FINETUNE_PRESETS
        base.update(table.get(size, table["tiny"]))
    return base
