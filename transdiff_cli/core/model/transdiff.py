"""TransDiff: an AR transformer (the encoder) that turns a class label, and in MRAR mode earlier
images, into semantic features, and a rectified-flow diffusion decoder that turns them into a latent
image. One class serves both the 1-step model and the multi-reference (MRAR) model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .. import flow
from ..flow import VelocityFn
from .config import ModelConfig
from .layers import DecoderBlock, EncoderBlock, FinalLayer, Scratch, TimeEmbed, fast_linear, split_heads_kv
from .tokens import patchify, unpatchify


class DiffusionDecoder(nn.Module):
    """DiT-style velocity network with cross-attention to the condition c."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        w = config.decoder_width
        self.grad_checkpointing = config.grad_checkpointing
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, config.num_tokens, w))
        self.time_embed = TimeEmbed(w)
        self.cond_embed = nn.Linear(config.width, w)
        self.input_proj = nn.Linear(config.token_dim, w)
        self.res_blocks = nn.ModuleList(
            DecoderBlock(w, config.heads, config.mlp_ratio, config.attn_dropout, config.proj_dropout)
            for _ in range(config.decoder_depth)
        )
        self.final_layer = FinalLayer(w, config.token_dim)

    def condition(self, c: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of every block for condition c: fixed during sampling,
        so the sampler computes them once instead of at every step."""
        cc = self.cond_embed(c)
        return [blk.attn2.kv(cc) for blk in self.res_blocks]

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, c: torch.Tensor | None = None,
                kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Velocity for tokens x_t (B, N_d, token_dim) at network times `timesteps` (= 1000 t)."""
        if kv is None:
            kv = self.condition(c)
        temb, tproj = self.time_embed(timesteps, x_t.dtype)
        h = self.input_proj(x_t) + self.diffusion_pos_embed_learned
        for blk, blk_kv in zip(self.res_blocks, kv):
            if self.grad_checkpointing and self.training:
                h = checkpoint(blk, h, tproj, blk_kv, use_reentrant=False)
            else:
                h = blk(h, tproj, blk_kv)
        return self.final_layer(h, temb)

    # ------------------------------------------------------------------ sampling fast path
    def schedule(self, timesteps: torch.Tensor, dtype: torch.dtype) -> list[list[torch.Tensor]]:
        """Everything that depends only on the time, for the S network times of a sampling run
        (shared by the whole batch): per step, the folded modulation of every block and of the
        final layer. Computed once per run in float32, then cast to `dtype`."""
        temb, tproj = self.time_embed.forward_fp32(timesteps)
        blocks = [blk.folded_modulation(tproj).to(dtype) for blk in self.res_blocks]
        final = self.final_layer.folded_modulation(temb).to(dtype)
        return [[m[i] for m in blocks] + [final[i]] for i in range(timesteps.shape[0])]

    def forward_step(self, x_t: torch.Tensor, mods: list[torch.Tensor], kv: list,
                     copies: int = 1, scratch: Scratch | None = None) -> torch.Tensor:
        """Velocity at one sampling step (no grad): `mods` is one entry of `schedule`, `kv` the
        condition's keys/values of `copies` x batch rows (per-head layout with a `scratch`).
        With CFG the conditional and unconditional rows share x_t, so everything before the
        first cross-attention (input projection, block 0's self-attention) runs once on the
        batch and is then repeated."""
        h = fast_linear(self.input_proj, x_t).add_(self.diffusion_pos_embed_learned)
        for j, (blk, blk_kv) in enumerate(zip(self.res_blocks, kv)):
            blk.self_attend_(h, mods[j], scratch)
            if j == 0 and copies > 1:
                h = h.repeat(copies, 1, 1)
            blk.cross_attend_mlp_(h, mods[j], blk_kv, scratch)
        return self.final_layer.forward_folded(h, mods[-1])


class TransDiff(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.width
        self.class_emb = nn.Embedding(config.num_classes, d)
        self.fake_latent = nn.Parameter(torch.zeros(1, d))  # the null class, used for CFG
        # 1-step: the mask token overwrites z_proj's output; kept for checkpoint compatibility.
        self.z_proj = nn.Linear(config.ref_dim if config.mrar else config.token_dim, d)
        self.z_proj_ln = nn.LayerNorm(d, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, config.ref_tokens if config.mrar else 1, d))
        self.encoder_pos_embed_learned = nn.Parameter(
            torch.zeros(1, config.buffer_size + config.num_slots, d))
        self.encoder_blocks = nn.ModuleList(
            EncoderBlock(d, config.heads, config.mlp_ratio, config.attn_dropout, config.proj_dropout)
            for _ in range(config.encoder_blocks)
        )
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, config.num_slots, d))
        self.decoder = DiffusionDecoder(config)
        self.register_buffer("block_ids", self._block_ids(), persistent=False)
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token,
                  self.encoder_pos_embed_learned, self.diffusion_pos_embed_learned,
                  self.decoder.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        te = self.decoder.time_embed.time_embedder
        nn.init.normal_(te.linear_1.weight, std=0.02)
        nn.init.normal_(te.linear_2.weight, std=0.02)
        # zero output layer: the untrained decoder predicts v = 0 (as DiT / MAR do)
        nn.init.zeros_(self.decoder.final_layer.linear.weight)
        nn.init.zeros_(self.decoder.final_layer.linear.bias)

    # ------------------------------------------------------------------ encoder
    def _block_ids(self) -> torch.Tensor:
        """Block index of every encoder position: buffer 0, then slot blocks 1..K (MRAR)."""
        config = self.config
        if not config.mrar:
            return torch.zeros(0, dtype=torch.long)
        slots = torch.arange(config.num_slots) // config.ref_tokens + 1
        return torch.cat([torch.zeros(config.buffer_size, dtype=torch.long), slots])

    def attention_mask(self, length: int, start: int = 0) -> torch.Tensor | None:
        """Block-causal mask (True = may attend) for queries start..length-1 over keys 0..length-1;
        None for the fully bidirectional 1-step model."""
        if not self.config.mrar:
            return None
        ids = self.block_ids[:length]
        return ids[start:, None] >= ids[None, :]

    def class_embedding(self, labels: torch.Tensor, null: bool = False,
                        drop: torch.Tensor | None = None) -> torch.Tensor:
        """Class embeddings, with the null embedding swapped in at rate label_drop_prob in training
        (or where the boolean `drop` says, so a trainer can draw the mask itself)."""
        if null:
            return self.fake_latent.expand(labels.shape[0], -1)
        emb = self.class_emb(labels)
        if drop is None and self.training and self.config.label_drop_prob > 0:
            drop = torch.rand(labels.shape[0], device=emb.device) < self.config.label_drop_prob
        if drop is not None:
            emb = torch.where(drop[:, None], self.fake_latent.to(emb.dtype), emb)
        return emb

    def _encoder_input(self, class_emb: torch.Tensor, refs: torch.Tensor | None,
                       start: int, stop: int) -> torch.Tensor:
        """Embedded encoder positions start..stop-1 of [buffer | slots]."""
        config, b = self.config, class_emb.shape[0]
        parts = [class_emb[:, None].expand(b, config.buffer_size, -1)]
        if config.mrar:
            parts.append(self.mask_token.expand(b, -1, -1))
            if refs is not None and refs.shape[1] > 0:
                parts.append(self.z_proj(refs))
        else:
            parts.append(self.mask_token.expand(b, config.num_slots, -1))
        x = torch.cat(parts, dim=1)[:, start:stop]
        return self.z_proj_ln(x + self.encoder_pos_embed_learned[:, start:stop])

    def _blocks(self, x: torch.Tensor, mask: torch.Tensor | None,
                caches: list[dict] | None = None) -> torch.Tensor:
        for i, blk in enumerate(self.encoder_blocks):
            if caches is not None:
                x = blk(x, mask, caches[i])
            elif self.config.grad_checkpointing and self.training:
                x = checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        return self.encoder_norm(x)

    def features(self, class_emb: torch.Tensor, refs: torch.Tensor | None = None) -> torch.Tensor:
        """Semantic features (encoder output after the final norm, buffer dropped, before the
        diffusion position embedding). MRAR: `refs` are (B, r * ref_tokens, ref_dim) for r earlier
        images; the features then cover the first r + 1 blocks."""
        config = self.config
        n = config.num_slots
        if config.mrar:
            n = config.ref_tokens * (1 + (0 if refs is None else refs.shape[1] // config.ref_tokens))
        length = config.buffer_size + n
        x = self._encoder_input(class_emb, refs, 0, length)
        x = self._blocks(x, self.attention_mask(length))
        return x[:, config.buffer_size:]

    def condition(self, features: torch.Tensor, start: int = 0) -> torch.Tensor:
        """c = features + the diffusion position embedding of their slots."""
        n = features.shape[1]
        return features + self.diffusion_pos_embed_learned[:, start:start + n]

    def reference_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """An earlier image compressed for MRAR: patchify with the reference patch size."""
        return patchify(latents, self.config.ref_patch_size)

    def to_latent(self, tokens: torch.Tensor) -> torch.Tensor:
        config = self.config
        return unpatchify(tokens, config.patch_size, config.latent_channels, config.latent_size)

    # ------------------------------------------------------------------ training
    def forward(self, latents: torch.Tensor, labels: torch.Tensor,
                noise: Sequence[torch.Tensor] | torch.Tensor | None = None,
                timesteps: Sequence[torch.Tensor] | torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss. 1-step: latents (B, C, H, W). MRAR: (B, K, C, H, W), K images of the
        same class, teacher-forced; the loss is the mean of the K decoder losses.
        `noise`/`timesteps` (per image in MRAR; B * diffusion_batch_mul rows in training) and the
        class-dropout mask `drop` override the random draws (parity tests, exact DDP equivalence)."""
        config = self.config
        class_emb = self.class_embedding(labels, drop=drop)
        if not config.mrar:
            c = self.condition(self.features(class_emb))
            return self._decoder_loss(latents, c, noise, timesteps)
        k = latents.shape[1]
        refs = torch.cat([self.reference_tokens(latents[:, j]) for j in range(k - 1)], dim=1)
        feats = self.features(class_emb, refs)
        losses = []
        for j in range(k):
            c = self.condition(feats[:, : (j + 1) * config.ref_tokens])
            losses.append(self._decoder_loss(latents[:, j], c,
                                             None if noise is None else noise[j],
                                             None if timesteps is None else timesteps[j]))
        return torch.stack(losses).mean()

    def _decoder_loss(self, latents: torch.Tensor, c: torch.Tensor, noise: torch.Tensor | None,
                      timesteps: torch.Tensor | None) -> torch.Tensor:
        m = self.config.diffusion_batch_mul if self.training else 1
        x0 = patchify(latents, self.config.patch_size).repeat(m, 1, 1)
        c = c.repeat(m, 1, 1)
        if noise is None:
            noise = torch.randn_like(x0)
        if timesteps is None:
            timesteps = flow.sample_timesteps(x0.shape[0], x0.device)
        return flow.flow_loss(lambda x, t: self.decoder(x, t, c=c), x0, timesteps, noise)

    # ------------------------------------------------------------------ sampling building blocks
    # The sampling loop (guidance batching, MRAR rounds, the sampler) is `sampling.loop`'s; the model
    # exposes what the network computes for it.
    def null_condition(self, batch: int = 1) -> torch.Tensor:
        """CFG's unconditional condition without references: the null class's first features."""
        null = self.class_embedding(torch.zeros(batch, dtype=torch.long, device=self.fake_latent.device), null=True)
        return self.condition(self.features(null))

    def velocity(self, c: torch.Tensor, batch: int, guided: bool, times: Sequence[float] | None = None
                 ) -> VelocityFn:
        """The decoder's velocity under the fixed condition c (`batch` rows, or [cond; uncond] when
        `guided`) as a sampler's velocity function. With the sampler's `times` this is the fast
        path: the cross-attention keys/values and the time modulation of every step are computed
        once per run, and the two guidance halves share one batch. Without, the plain network:
        the condition re-projected at every step, as the reference does."""
        if times is not None:
            return self._fast_velocity(c, batch, guided, times)
        dec = self.decoder

        def velocity(x: torch.Tensor, t: float):
            xin = torch.cat([x, x]) if guided else x
            ts = torch.full((xin.shape[0],), flow.TIME_SCALE * t, device=x.device, dtype=x.dtype)
            v = dec(xin, ts, c=c)
            return (v[:batch], v[batch:]) if guided else (v, None)

        return velocity

    def _fast_velocity(self, c: torch.Tensor, batch: int, guided: bool, times: Sequence[float]) -> VelocityFn:
        dtype = c.dtype
        dec = self.decoder
        scratch = Scratch() if Scratch.wanted(c.device, dtype, getattr(dec, "_compiled_step", False)) else None
        # contiguous (per-head) keys/values: the attention then reads them without a copy
        kv = [split_heads_kv(k, v) if scratch is not None else (k.contiguous(), v.contiguous())
              for k, v in dec.condition(c)]
        ts = torch.tensor([flow.TIME_SCALE * t for t in times], device=c.device)
        schedule = dec.schedule(ts, dtype)
        step = {t: i for i, t in enumerate(times)}
        copies = 2 if guided else 1

        def velocity(x: torch.Tensor, t: float):
            v = dec.forward_step(x.to(dtype), schedule[step[t]], kv, copies, scratch).float()
            return (v[:batch], v[batch:]) if guided else (v, None)

        return velocity

    def round_features(self, class_emb: torch.Tensor, images: list[torch.Tensor], k: int,
                       caches: list[dict]) -> torch.Tensor:
        """MRAR round k's new block of features given the latents of rounds 0..k-1: only that block
        goes through the encoder, the earlier blocks' keys/values are reused from `caches` (one
        dict per encoder block, empty at round 0). Round 0 returns the first block."""
        config = self.config
        buf, r = config.buffer_size, config.ref_tokens
        if k == 0:
            start, stop = 0, buf + r
        else:
            start, stop = buf + k * r, buf + (k + 1) * r
        refs = self.references(images, class_emb.shape[0] // images[0].shape[0] if images else 1)
        x = self._encoder_input(class_emb, refs, start, stop)
        x = self._blocks(x, self.attention_mask(stop, start), caches)
        return x[:, buf:] if k == 0 else x

    def references(self, images: list[torch.Tensor], copies: int = 1) -> torch.Tensor | None:
        """The reference tokens of earlier rounds' latents, repeated for the guidance copies."""
        if not images:
            return None
        refs = torch.cat([self.reference_tokens(im) for im in images], dim=1)
        return refs.repeat(copies, 1, 1) if copies > 1 else refs
