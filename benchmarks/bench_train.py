"""Time training steps (forward, backward, AdamW) and relate them to the matmul peak; prints one JSON.

    python benchmarks/bench_train.py --size S --batch 8 --precision bf16 --optimizer fused

AdamW as in the paper: betas (0.9, 0.95), weight decay 0.02 on the encoder's matrices only (none on
biases, norms, embeddings-as-vectors and the decoder), lr 1e-4 x batch / 256. `--precision bf16`
is bf16 autocast over float32 master weights (what training uses); fp32 is plain float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import (
    DTYPES,
    add_model_args,
    bench_device,
    count_flops,
    machine_info,
    matmul_peak,
    random_model,
    set_threads,
    synchronize,
)

from transdiff_cli.core.training.optim import param_groups


def make_optimizer(model: torch.nn.Module, kind: str, lr: float) -> torch.optim.AdamW:
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True), "forloop": dict(foreach=False)}[kind]
    return torch.optim.AdamW(param_groups(model, 0.02), lr=lr, betas=(0.9, 0.95), **flags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--diffusion-batch-mul", type=int, default=4)
    p.add_argument("--optimizer", choices=["fused", "foreach", "forloop"], default="fused")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    args = p.parse_args()
    threads = set_threads(args.threads)
    device = bench_device(args)
    autocast = args.precision == "bf16"
    args.precision = "fp32"  # master weights stay float32; bf16 means autocast
    model = random_model(args, args.mrar, device)
    model.config.diffusion_batch_mul = args.diffusion_batch_mul
    model.train()
    opt = make_optimizer(model, args.optimizer, 1e-4 * args.batch / 256)
    mc = model.config
    gen = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.batch, mc.mrar_rounds) if mc.mrar else (args.batch,)
    latents = torch.randn(*shape, mc.latent_channels, mc.latent_size, mc.latent_size, generator=gen, device=device)
    labels = torch.randint(0, mc.num_classes, (args.batch,), generator=gen, device=device)

    def forward_backward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(latents, labels)
        loss.backward()
        return loss

    def step():
        forward_backward()
        synchronize(device)
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - t0

    flops = count_flops(forward_backward)
    opt.zero_grad(set_to_none=True)
    for _ in range(2):
        step()
    times, opt_times = [], []
    for _ in range(args.steps):
        synchronize(device)
        t0 = time.perf_counter()
        opt_times.append(step())
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    peak = matmul_peak(DTYPES["bf16" if autocast else "fp32"], device, n=args.peak_size)
    achieved = flops / s / 1e9
    result = {
        "device": str(device), "precision": "bf16-autocast" if autocast else "fp32", "optimizer": args.optimizer,
        "batch": args.batch, "diffusion_batch_mul": args.diffusion_batch_mul,
        "config": {k: getattr(mc, k) for k in ("size", "width", "heads", "encoder_depth", "decoder_depth",
                                               "num_tokens", "mrar")},
        "parameters": sum(q.numel() for q in model.parameters()),
        "s_per_step": round(s, 4), "images_per_s": round(args.batch / s, 2),
        "optimizer_s_per_step": round(statistics.median(opt_times), 4),
        "times_s": [round(t, 3) for t in times],
        "flops_per_step": flops, "achieved_gflops": float(f"{achieved:.4g}"),
        "matmul_peak_gflops": float(f"{peak:.4g}"), "ratio_to_peak": float(f"{achieved / peak:.4g}"),
    }
    result.update(machine_info(threads, device))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
