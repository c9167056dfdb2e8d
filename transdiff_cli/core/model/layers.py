"""Transformer layers of TransDiff. Parameter names follow the published checkpoints
(timm's ViT block for the encoder, PixArt-style adaLN-single blocks for the decoder)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from timm.layers import Mlp

from . import cpu_kernels

EPS = 1e-6


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, h, d // h).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# ---------------------------------------------------------------- no-grad sampling kernels
# oneDNN's fused linear is ~5-20% faster than ATen's addmm on CPU at the decoder's shapes (no
# broadcast copy of the bias into the output, GELU applied in the GEMM epilogue instead of a
# separate pass). It has no autograd formula: used only by the no-grad sampling fast path, and
# only in the dtypes this CPU runs it in (no bf16 primitive without native bf16). Without native
# bf16, ATen's bf16 GEMMs are emulated and ~7x slower than float32 (measured on an AVX2 EPYC), so
# bf16 weights are multiplied in float32 and the product rounded to bf16 once: the same result
# within bf16 rounding, at float32 speed, with the weights still held in bf16.


def inference_mode(m: nn.Module) -> bool:
    """Eval mode without autograd (sampling, features): the no-grad fused kernels below apply."""
    return not m.training and not torch.is_grad_enabled()


def fast_linear(m: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    # under torch.compile inductor does its own fusion (and wants the weights as graph constants)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        if cpu_kernels.fused_linear_supported(x.dtype):
            return cpu_kernels.fused_linear(x, m.weight, m.bias, gelu)
        if x.dtype == torch.bfloat16 and not cpu_kernels.native_bf16():
            return fast_linear_fp32(m, x, gelu).to(x.dtype)
    y = F.linear(x, m.weight, m.bias)
    return F.gelu(y) if gelu else y


def fast_linear_fp32(m: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """The linear layer computed in float32 whatever the weights' dtype."""
    x, w, b = x.float(), m.weight.float(), None if m.bias is None else m.bias.float()
    if cpu_kernels.fused_linear_supported(torch.float32):
        return cpu_kernels.fused_linear(x, w, b, gelu)
    y = F.linear(x, w, b)
    return F.gelu(y) if gelu else y


def fast_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked attention of (B, H, N, D) tensors at inference, where there is no `Scratch`
    (GPU, float32, the encoder, torch.compile). On CPU in bfloat16 two batched GEMMs around a
    softmax run ~1.6x faster than torch's flash kernel, whose bf16 tiles are slow here."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or not cpu_kernels.native_bf16():
        return F.scaled_dot_product_attention(q, k, v)  # emulated bf16 bmm is slow; SDPA is not
    b, h, n, d = q.shape
    q3, k3, v3 = q.reshape(b * h, n, d), k.reshape(b * h, -1, d), v.reshape(b * h, -1, d)
    # beta=0: the input is ignored, the GEMM applies the 1/sqrt(d) scale for free
    s = torch.baddbmm(q3.new_empty(1, 1, 1), q3, k3.transpose(1, 2), beta=0, alpha=d**-0.5)
    return torch.bmm(torch.softmax(s, dim=-1), v3).view(b, h, n, d)


class Scratch:
    """Buffers of the CPU bfloat16 sampling fast path, allocated at the first step and reused at
    every later one. A fresh multi-megabyte tensor per attention call costs the CPU allocator page
    faults and a cold cache; reusing one keeps it warm (~10% of a bf16 sampling step)."""

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    @staticmethod
    def wanted(device: torch.device, dtype: torch.dtype, compiled: bool) -> bool:
        """float32, GPUs and CPUs without native bf16 (whose bf16 bmm is emulated) keep SDPA;
        torch.compile plans its own buffers."""
        return device.type == "cpu" and dtype == torch.bfloat16 and not compiled and cpu_kernels.native_bf16()

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._flat.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._flat[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


HeadsKV = tuple[list[torch.Tensor], list[torch.Tensor]]  # per head: keys transposed (R, d, nk), values (R, nk, d)


def attend_heads_(out: torch.Tensor, q: torch.Tensor, kv: HeadsKV, scratch: Scratch) -> torch.Tensor:
    """out[..., head h] = softmax(q_h k_h^T / sqrt(d)) v_h, written into `out` (R, n, W); q (R, n, W)
    may be a strided view (the q third of a qkv projection). One head at a time through one reused
    (R, n, nk) scores buffer with the softmax in place: no head split/merge copies, no fresh
    allocations, and the scores stay in cache between the two GEMMs."""
    keys_t, values = kv
    d = q.shape[-1] // len(keys_t)
    s = scratch.get("scores", (q.shape[0], q.shape[1], keys_t[0].shape[-1]), q)
    for h, (k_t, v) in enumerate(zip(keys_t, values)):
        cols = slice(h * d, (h + 1) * d)
        torch.baddbmm(s, q[..., cols], k_t, beta=0, alpha=d**-0.5, out=s)
        torch.ops.aten._softmax.out(s, -1, False, out=s)  # row-wise: reads a row before writing it
        torch.bmm(s, v, out=out[..., cols])
    return out


def split_heads_kv(k: torch.Tensor, v: torch.Tensor) -> HeadsKV:
    """(R, H, nk, d) keys/values -> the per-head layout of `attend_heads_`, contiguous so the
    GEMMs read them without a copy (done once per sampling run for the condition)."""
    return ([k[:, h].transpose(1, 2).contiguous() for h in range(k.shape[1])],
            [v[:, h].contiguous() for h in range(v.shape[1])])


class SelfAttention(nn.Module):
    """Multi-head self-attention (SDPA). `cache` holds keys/values of earlier positions: with
    block-causal masks the earlier positions never see later ones, so reusing them is exact."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        fast = inference_mode(self)
        q, k, v = (_heads(t, self.heads) for t in (fast_linear(self.qkv, x) if fast else self.qkv(x)).chunk(3, -1))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if fast:
            out = fast_attention(q, k, v) if mask is None else F.scaled_dot_product_attention(q, k, v, mask)
            return fast_linear(self.proj, _merge(out))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj_drop(self.proj(_merge(out)))

    def forward_fast(self, x: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """Unmasked, no-grad, eval-mode forward (the decoder during sampling)."""
        qkv = fast_linear(self.qkv, x)
        if scratch is None:
            q, k, v = (_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
            return fast_linear(self.proj, _merge(fast_attention(q, k, v)))
        q, k, v = qkv.chunk(3, dim=-1)
        d = x.shape[-1] // self.heads
        cols = [slice(h * d, (h + 1) * d) for h in range(self.heads)]
        kv = ([k[..., c].transpose(1, 2) for c in cols], [v[..., c] for c in cols])
        return fast_linear(self.proj, attend_heads_(scratch.get("heads_out", x.shape, x), q, kv, scratch))


class CrossAttention(nn.Module):
    """Queries from the image tokens, keys/values from the (projected) condition."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def kv(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the condition: computed once per sampling run."""
        return _heads(self.wk(c), self.heads), _heads(self.wv(c), self.heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = _heads(self.wq(x), self.heads)
        k, v = kv
        if k.shape[0] != q.shape[0]:  # one condition shared by several noise draws
            k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
            v = v.repeat_interleave(q.shape[0] // v.shape[0], 0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(_merge(out)))

    def forward_fast(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | HeadsKV,
                     scratch: Scratch | None = None) -> torch.Tensor:
        """No-grad, eval-mode forward; kv batch equals x's (the sampler builds it so). With a
        scratch, kv is in the per-head layout of `split_heads_kv`."""
        q = fast_linear(self.wq, x)
        if scratch is None:
            return fast_linear(self.proj, _merge(fast_attention(_heads(q, self.heads), *kv)))
        return fast_linear(self.proj, attend_heads_(scratch.get("heads_out", x.shape, x), q, kv, scratch))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block (timm `Block` layout and names)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = SelfAttention(dim, heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, cache)
        if inference_mode(self):
            return x + fast_linear(self.mlp.fc2, fast_linear(self.mlp.fc1, self.norm2(x), gelu=True))
        return x + self.mlp(self.norm2(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DecoderBlock(nn.Module):
    """adaLN-single block (PixArt-alpha): modulated self-attention and MLP, plain cross-attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn1 = SelfAttention(dim, heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.attn2 = CrossAttention(dim, heads, attn_drop, proj_drop)
        self.norm3 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor, tproj: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mod = self.scale_shift_table + tproj  # (B, 6, W)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)
        x = x + gate1 * self.attn1(modulate(self.norm1(x), shift1, scale1))
        x = x + self.attn2(self.norm2(x), kv)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))

    # Sampling fast path: every image of a sampling batch shares the time t, so the adaLN
    # modulation is one vector per step and folds into the LayerNorm's affine parameters:
    # LN(x)(1 + s) + h = x_hat (w (1 + s)) + (b (1 + s) + h). One fused layer_norm call replaces
    # LayerNorm + multiply + add, and the gated residuals become in-place addcmul_.
    def folded_modulation(self, tproj: torch.Tensor) -> torch.Tensor:
        """tproj (S, 6, W) of S steps -> float32 (S, 6, W): LN1 weight, LN1 bias, gate1,
        LN3 weight, LN3 bias, gate2 (computed in float32 whatever the weights' dtype)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table.float() + tproj.float()).unbind(1)
        w1, b1 = self.norm1.weight.float(), self.norm1.bias.float()
        w3, b3 = self.norm3.weight.float(), self.norm3.bias.float()
        return torch.stack([w1 * (1 + scale1), b1 * (1 + scale1) + shift1, gate1,
                            w3 * (1 + scale2), b3 * (1 + scale2) + shift2, gate2], dim=1)

    def self_attend_(self, x: torch.Tensor, mod: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """x += gate1 * SelfAttn(modulated LN1(x)), in place (no-grad sampling only)."""
        h = F.layer_norm(x, x.shape[-1:], mod[0], mod[1], EPS)
        return x.addcmul_(self.attn1.forward_fast(h, scratch), mod[2])

    def cross_attend_mlp_(self, x: torch.Tensor, mod: torch.Tensor,
                          kv: tuple[torch.Tensor, torch.Tensor] | HeadsKV,
                          scratch: Scratch | None = None) -> torch.Tensor:
        """The rest of the block in place: cross-attention, then the gated MLP."""
        x.add_(self.attn2.forward_fast(self.norm2(x), kv, scratch))
        h = F.layer_norm(x, x.shape[-1:], mod[3], mod[4], EPS)
        return x.addcmul_(fast_linear(self.mlp.fc2, fast_linear(self.mlp.fc1, h, gelu=True)), mod[5])


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.norm = nn.LayerNorm(dim, eps=EPS, elementwise_affine=False)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table + temb[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def folded_modulation(self, temb: torch.Tensor) -> torch.Tensor:
        """temb (S, W) -> float32 (S, 2, W): the LayerNorm weight (1 + scale) and bias (shift)."""
        shift, scale = (self.scale_shift_table.float() + temb.float()[:, None]).unbind(1)
        return torch.stack([1 + scale, shift], dim=1)

    def forward_folded(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        return fast_linear(self.linear, F.layer_norm(x, x.shape[-1:], mod[0], mod[1], EPS))


class TimeEmbed(nn.Module):
    """1000*t -> sinusoid (256, cos first) -> MLP = temb; tproj = Linear(SiLU(temb)) as (6, W)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.sinusoid = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        temb = self.time_embedder(self.sinusoid(timesteps).to(dtype))
        tproj = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))
        return temb, tproj

    def forward_fp32(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same in float32 whatever the weights' dtype: for the handful of sampling times of a
        run, computed once, so low-precision weights lose nothing here."""
        te = self.time_embedder

        def lin(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, m.weight.float(), m.bias.float())

        temb = lin(te.linear_2, F.silu(lin(te.linear_1, self.sinusoid(timesteps).float())))
        return temb, lin(self.time_proj, F.silu(temb)).unflatten(1, (6, -1))
