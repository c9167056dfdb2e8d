"""The Python API: load once with `TransDiffPipeline.from_pretrained`, then sample, read features,
decode, fuse and measure diversity from a notebook or a script.

    pipe = TransDiffPipeline.from_pretrained("runs/digits-tiny")
    out = pipe([3, "digit-7"], num_per_class=4, seed=0)
    out.images[0].save("three.png")

Sampling goes through the same functions as `transdiff sample` (settings resolved by
`checkpoint_settings`, per-image seeded noise, the same batches, the checkpoint's tokenizer), so the same
seed and batch size give the CLI's pixels. Progress goes through `tqdm.auto` (a widget in Jupyter).
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from .core.data.classes import resolve_class, resolve_classes
from .core.data.images import to_pil
from .core.data.tokenizer import Tokenizer
from .core.device import resolve_device
from .core.errors import TransDiffError
from .core.eval.diversity import measure_diversity
from .core.io.checkpoint import Checkpoint, load_checkpoint
from .core.io.hub import upload_folder
from .core.model.config import ModelConfig
from .core.sampling.curvature import with_profile
from .core.sampling.fuse import fuse
from .core.sampling.generate import latents_to_images
from .core.sampling.inference import open_checkpoint, open_tokenizer
from .core.sampling.loop import decode, feature_slots, model_device_dtype, sample_latents
from .core.sampling.options import OptionTypeError, OptionValueError, SamplingOptions
from .core.sampling.seeding import initial_noise, step_generators
from .core.sampling.settings import SampleSettings, checkpoint_settings, reference_settings
from .core.share.export import Exported, export_checkpoint
from .core.validate import SEED_MAX

Classes = int | str | Sequence[int | str] | None  # indices or names; None = every class


@dataclass
class TransDiffOutput:
    images: list[Image.Image]  # the final image for each label
    labels: list[int]
    latents: torch.Tensor  # (N, C, H, W) float32 on the CPU: the final latents
    round_images: list[list[Image.Image]]  # [round][image]: every MRAR round; one round in 1-step mode
    round_latents: list[torch.Tensor]  # [round] (N, C, H, W); the last is `latents`
    settings: SampleSettings
    seed: int


@dataclass
class FuseOutput:
    images: list[Image.Image]  # class A, the fused features, class B (the same noise)
    latents: torch.Tensor  # (3, C, H, W) float32 on the CPU
    mask: torch.Tensor  # (n,) True where the slot came from class A
    labels: tuple[int, int]


@dataclass
class DiversityOutput:
    labels: list[int]
    per_class: torch.Tensor  # (len(labels),) the paper's measure; lower = more diverse
    per_round: torch.Tensor | None  # MRAR: (rounds, len(labels)), each round's feature block alone

    @property
    def mean(self) -> float:
        return self.per_class.double().mean().item()


def _tokenizer_spec(tokenizer: Tokenizer) -> dict | None:
    spec = getattr(tokenizer, "spec", None)
    return spec() if callable(spec) else None


class TransDiffPipeline:
    """A loaded checkpoint (model on its device, in its precision) and the tokenizer that turns
    its latents into images."""

    def __init__(self, checkpoint: Checkpoint, tokenizer: Tokenizer):
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, source: str | Path, vae: str | None = None, device: str | None = None,
                        precision: str = "auto", *, weights: str = "ema", compile: bool = False
                        ) -> TransDiffPipeline:
        """`source`: a run folder (its latest checkpoint), a checkpoint or exported model folder, a
        published `.pth`, or a Hub file or model folder (`hf://OWNER/REPO/FILE`, `hf://OWNER/REPO[@REV]`).
        `vae`: the tokenizer ("kl16:PATH", ...; default: the one the checkpoint was trained with).
        `device`: default the best available; `precision`: auto (bf16 where it is native: GPUs, CPUs with
        avx512_bf16/AMX; else fp32), fp32, bf16 or fp16 (GPU)."""
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"`source` must be a path (str or Path), not {type(source).__name__} ({source!r})")
        dev = resolve_device(device)
        ck = open_checkpoint(source, weights=weights, device=dev, precision=precision, compile=compile)
        return cls(ck, open_tokenizer(ck, vae, dev))

    # ------------------------------------------------------------------ sharing
    def save_pretrained(self, save_directory: str | Path, *, with_vae: bool = False, overwrite: bool = False,
                        license: str | None = None) -> Exported:
        """Write this model as an exported folder (`transdiff export`): model.safetensors, config.json,
        README.md and, with `with_vae`, the pipeline's VAE under vae/. The weights are the float32 ones
        this pipeline was loaded from (re-read when it holds them in another precision)."""
        ck = self.checkpoint
        state = None
        if self.model.class_emb.weight.dtype != torch.float32:
            state = load_checkpoint(ck.path, weights=ck.meta.get("weights", "ema").replace("model_ema", "ema")
                                    ).model.state_dict()
        else:
            state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        vae = None if self.tokenizer.kind == "pixels" else self.tokenizer
        return export_checkpoint(ck, save_directory, with_vae=with_vae, overwrite=overwrite, license=license,
                                 tokenizer=vae if with_vae else None, state=state,
                                 vae=_tokenizer_spec(self.tokenizer))

    def push_to_hub(self, repo_id: str, *, with_vae: bool = False, private: bool | None = None,
                    token: str | None = None, commit_message: str | None = None, license: str | None = None) -> str:
        """Upload the `save_pretrained` folder to the Hub repo `repo_id` (created if missing) through
        huggingface_hub; returns the commit URL. Offline it raises, naming the files it would have uploaded."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="transdiff-push-") as tmp:
            folder = Path(tmp) / repo_id.replace("/", "--")
            self.save_pretrained(folder, with_vae=with_vae, license=license)
            return upload_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def device(self) -> torch.device:
        return model_device_dtype(self.model)[0]

    @property
    def class_names(self) -> list[str] | None:
        return self.checkpoint.class_names

    def labels(self, classes: Classes) -> list[int]:
        """Class indices for indices or names (the checkpoint's own, or ImageNet's)."""
        if isinstance(classes, torch.Tensor):
            classes = classes.tolist()
        values = [classes] if isinstance(classes, (numbers.Integral, str)) else classes
        return resolve_classes(None if values is None else list(values), self.config.num_classes,
                               self.class_names)

    def settings(self, options: SamplingOptions | None = None, *, mode: str | None = None,
                 rounds: int | None = None, cfg: float | Sequence[float] | None = None,
                 cfg_interval: Sequence[float] | None = None, scale_0: float | None = None,
                 scale_1: float | None = None, sampling_steps: int | Sequence[int] | None = None,
                 sampler: str | None = None, sampler_params: dict | None = None) -> SampleSettings:
        """The sampling settings: what is not given comes from the checkpoint, or for a published file
        from the authors' evaluation table (as in the CLI); `settings.sources` says which. Give a
        `SamplingOptions` or the same as keywords."""
        keywords = dict(mode=mode, rounds=rounds, cfg=cfg, cfg_interval=cfg_interval, scale_0=scale_0,
                        scale_1=scale_1, sampling_steps=sampling_steps, sampler=sampler, sampler_params=sampler_params)
        if options is None:
            options = SamplingOptions.build(**keywords)
        elif not isinstance(options, SamplingOptions):
            raise TypeError(f"`options` must be a SamplingOptions, not {type(options).__name__}")
        elif any(v is not None for v in keywords.values()):
            raise TypeError("give `options` or sampling keywords, not both")
        notes: list[str] = []
        settings = checkpoint_settings(self.checkpoint, options, warnings=notes)
        for note in notes:
            warnings.warn(note, stacklevel=3)
        return with_profile(self.model, settings)

    def _one_step_settings(self, options: SamplingOptions | None, **keywords: Any) -> SampleSettings:
        """Settings for decoding one condition (`decode`, `fuse`): the 1-step mode, from `options`
        when given, else from the keyword arguments."""
        if options is not None:
            return self.settings(options.with_values({"mode": "1step"}))
        return self.settings(mode="1step", **keywords)

    # ------------------------------------------------------------------ sampling
    def __call__(self, classes: Classes = None, num_per_class: int = 1, mode: str | None = None,
                 rounds: int | None = None, cfg: float | Sequence[float] | None = None,
                 scale_0: float | None = None, scale_1: float | None = None,
                 sampling_steps: int | Sequence[int] | None = None, sampler: str | None = None,
                 seed: int = 0, batch_size: int = 16, progress: bool = True, *,
                 cfg_interval: Sequence[float] | None = None, sampler_params: dict | None = None,
                 options: SamplingOptions | None = None) -> TransDiffOutput:
        """`num_per_class` images of each class (grouped by class). `mode` "1step" or "mrar",
        `rounds` MRAR's K, `cfg` one guidance scale or one per round, `cfg_interval` (lo, hi) guidance
        only for those times, `sampling_steps` sampler steps per round (or one count per round),
        `sampler` a name in `SAMPLERS` ("em" Euler-Maruyama, "ode", "heun", "em-heun") with
        `sampler_params` (e.g. {"grid": "shifted"}); defaults from the checkpoint. Or all of these as
        one `options`. Image i's noise depends on (seed, i) only; the same seed and batch size give
        `transdiff sample`'s images."""
        _check_int("num_per_class", num_per_class)
        _check_int("batch_size", batch_size)
        _check_int("seed", seed, low=0, high=SEED_MAX)
        settings = self.settings(options, mode=mode, rounds=rounds, cfg=cfg, cfg_interval=cfg_interval,
                                 scale_0=scale_0, scale_1=scale_1, sampling_steps=sampling_steps, sampler=sampler,
                                 sampler_params=sampler_params)
        labels = [y for y in self.labels(classes) for _ in range(num_per_class)]
        latents: list[list[torch.Tensor]] = [[] for _ in range(settings.rounds)]
        images: list[list[Image.Image]] = [[] for _ in range(settings.rounds)]
        with tqdm(total=len(labels), desc="sampling", unit="image", disable=not progress) as bar:
            for start in range(0, len(labels), batch_size):
                batch = labels[start:start + batch_size]
                rounds_out = sample_latents(self.model, batch, range(start, start + len(batch)), settings, seed)
                for k, lat in enumerate(rounds_out):  # each round decoded as the CLI decodes the output
                    latents[k].append(lat.float().cpu())
                    images[k] += to_pil(latents_to_images(self.tokenizer, lat))
                bar.update(len(batch))
        round_latents = [torch.cat(r) for r in latents]
        return TransDiffOutput(images[-1], labels, round_latents[-1], images, round_latents, settings, seed)

    # ------------------------------------------------------------------ features and decoding
    @torch.no_grad()
    def features(self, classes: Classes, references: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The semantic features (B, n, D) of each class: the encoder's output after its final norm,
        the class buffer dropped, before the diffusion position embedding (float32, CPU). MRAR
        models: `references` are the latents (B, C, H, W) of earlier rounds, one tensor per round;
        without them, the first block's features."""
        device, dtype = model_device_dtype(self.model)
        y = torch.tensor(self.labels(classes), device=device)
        refs = None
        if references:
            if not self.config.mrar:
                raise TransDiffError("references are for MRAR checkpoints; this one is a 1-step model")
            refs = torch.cat([self.model.reference_tokens(r.to(device=device, dtype=dtype)) for r in references], 1)
        return self.model.features(self.model.class_embedding(y), refs).float().cpu()

    @torch.no_grad()
    def decode(self, features: torch.Tensor | None = None, *, condition: torch.Tensor | None = None,
               noise: torch.Tensor | None = None, seed: int = 0, cfg: float | None = None,
               sampling_steps: int | None = None, scale_0: float | None = None, scale_1: float | None = None,
               sampler: str | None = None, cfg_interval: Sequence[float] | None = None,
               sampler_params: dict | None = None, options: SamplingOptions | None = None,
               slots: int | Sequence[int] | None = None) -> TransDiffOutput:
        """Images from semantic `features` (B, n, D), or from a ready `condition` (features plus the
        diffusion position embedding). `noise` (B, N_d, token_dim) defaults to image i's noise for
        `seed`, so `decode(features(classes))` redraws `pipe(classes)`'s images. Guidance uses the
        null class's features as the unconditional branch. `slots`: decode from part of the features
        only, the first k (an int) or the given slot indices (paper, Figure 1 middle); None = all."""
        if (features is None) == (condition is None):
            raise TransDiffError("give either features or condition")
        for name, value in (("features", features), ("condition", condition), ("noise", noise)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor (B, n, D), not {type(value).__name__}")
            if value is not None and value.dim() != 3:
                raise ValueError(f"`{name}` must have 3 dimensions (B, n, D), not shape {tuple(value.shape)}")
        _check_int("seed", seed, low=0, high=SEED_MAX)
        settings = self._one_step_settings(options, cfg=cfg, scale_0=scale_0, scale_1=scale_1,
                                           sampling_steps=sampling_steps, sampler=sampler,
                                           cfg_interval=cfg_interval, sampler_params=sampler_params)
        model = self.model
        device, dtype = model_device_dtype(model)
        x = (features if condition is None else condition).to(device=device, dtype=dtype)
        c = model.condition(x) if condition is None else x
        n = c.shape[0]
        try:
            keep = None if slots is None else feature_slots(slots, c.shape[1])
        except TypeError as e:
            raise OptionTypeError(str(e)) from None
        except ValueError as e:
            raise OptionValueError(str(e)) from None
        if noise is None:
            noise = initial_noise(model.config, range(n), seed)
        try:
            lat = decode(model, c, noise.to(device=device, dtype=dtype), settings.make_sampler(),
                         cfg=settings.cfg[0], generator=step_generators(range(n), seed, device),
                         interval=settings.cfg_interval, slots=keep)
        except ValueError as e:  # an MRAR condition with references under guidance
            raise TransDiffError(f"{e} (or decode with cfg=1)") from e
        images = to_pil(latents_to_images(self.tokenizer, lat))
        return TransDiffOutput(images, [], lat.float().cpu(), [images], [lat.float().cpu()], settings, seed)

    # ------------------------------------------------------------------ the paper's analyses
    def fuse(self, a: int | str, b: int | str, ratio: float = 0.5, pattern: str = "halves", *, seed: int = 0,
             cfg: float | None = None, sampling_steps: int | None = None, scale_0: float | None = None,
             scale_1: float | None = None, sampler: str | None = None, cfg_interval: Sequence[float] | None = None,
             sampler_params: dict | None = None, options: SamplingOptions | None = None) -> FuseOutput:
        """Feature fusion (paper §4.2.2, 1-step models): a `ratio` share of the slots from class A's
        features (`pattern` halves, interleave or random), the rest from B's; A, the fusion and B
        are decoded from the same noise (`transdiff fuse`)."""
        _check_int("seed", seed, low=0, high=SEED_MAX)
        settings = self._one_step_settings(options, cfg=cfg, scale_0=scale_0, scale_1=scale_1,
                                           sampling_steps=sampling_steps, sampler=sampler,
                                           cfg_interval=cfg_interval, sampler_params=sampler_params)
        ya, yb = (resolve_class(v, self.config.num_classes, self.class_names) for v in (a, b))
        result = fuse(self.model, ya, yb, settings, ratio=ratio, pattern=pattern, seed=seed)
        images = to_pil(latents_to_images(self.tokenizer, result.latents))
        return FuseOutput(images, result.latents.float().cpu(), result.mask.cpu(), (ya, yb))

    def diversity(self, classes: Classes = None, *, mode: str | None = None, num_refs: int = 1,
                  sampling_steps: int | None = None, cfg: float | Sequence[float] | None = None, seed: int = 0,
                  batch_size: int = 64, options: SamplingOptions | None = None) -> DiversityOutput:
        """The paper's diversity measure (appendix D) of each class's features (`transdiff
        diversity`). MRAR mode samples `num_refs` references per class with `sampling_steps`
        (default 10, as the CLI), or with `options`."""
        _check_int("num_refs", num_refs)
        _check_int("batch_size", batch_size)
        _check_int("seed", seed, low=0, high=SEED_MAX)
        if options is None:
            options = SamplingOptions.build(mode=mode, sampling_steps=sampling_steps, cfg=cfg)
        settings = reference_settings(self.checkpoint, options)
        labels = self.labels(classes)
        per_class, per_round = measure_diversity(self.model, labels, settings, seed=seed, num_refs=num_refs,
                                                 batch_size=batch_size)
        return DiversityOutput(labels, per_class.double(), per_round)


def _check_int(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """An API count or seed: a TypeError unless an int, a ValueError unless within [low, high]."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise OptionTypeError(f"`{name}` must be an int, not {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        raise OptionValueError(f"`{name}` {value} is out of range: give an int from {low}"
                               + (f" to {high}" if high is not None else " up"))
    return int(value)
