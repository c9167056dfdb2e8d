"""Time 1-step or MRAR sampling and relate it to the machine's matmul peak; prints one JSON object.

    python benchmarks/bench_sampling.py --width 256 --heads 4 --encoder-depth 2 --decoder-depth 4 \\
        --mode 1step --batch 4 --sampling-steps 25 --cfg 1.5 --precision bf16 --repeats 3

`--measure-memory` instead reports the peak memory of one sampling run (e.g. `--size H --batch 1`):
the process's peak RSS on CPU, the CUDA allocator's peak on a GPU; against the bytes of the weights.
On a GPU (`--device cuda`), e.g. the issue's L-size measurement:

    python benchmarks/bench_sampling.py --device cuda --size L --mode 1step --batch 64 \\
        --sampling-steps 100 --cfg 1.3 --precision bf16 --repeats 3
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
    load_model,
    machine_info,
    matmul_peak,
    peak_rss_bytes,
    set_threads,
    synchronize,
    time_runs,
)

from transdiff_cli.core.sampling.inference import prepare
from transdiff_cli.core.sampling.loop import sample_rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--mode", choices=["1step", "mrar"], default="1step")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sampling-steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-cache", action="store_true", help="the plain (reference-style) sampling path")
    p.add_argument("--measure-memory", action="store_true",
                   help="report peak RSS of one sampling run instead of timing")
    args = p.parse_args()
    threads = set_threads(args.threads)
    mrar = args.mode == "mrar"
    device = bench_device(args)
    cuda = device.type == "cuda"

    rss_before = peak_rss_bytes()
    model = load_model(args, mrar, device)
    if model.config.mrar != mrar:
        p.error(f"the checkpoint is {'an MRAR' if model.config.mrar else 'a 1-step'} model; use --mode accordingly")
    model = prepare(model, device, args.precision)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    gen = torch.Generator(device=device).manual_seed(args.seed)
    labels = torch.randint(0, model.config.num_classes, (args.batch,), generator=gen, device=device)
    noise = torch.randn(args.batch, model.config.num_tokens, model.config.token_dim, generator=gen, device=device)
    rounds = model.config.mrar_rounds if mrar else 1

    def run():
        gen.manual_seed(args.seed)
        return sample_rounds(model, labels, cfg=args.cfg, sampling_steps=args.sampling_steps, noise=noise,
                             generator=gen, cache=not args.no_cache)[-1]

    result = {"mode": args.mode, "device": str(device), "precision": args.precision, "compile": args.compile,
              "batch": args.batch, "sampling_steps": args.sampling_steps, "cfg": args.cfg,
              "config": {k: getattr(model.config, k) for k in
                         ("size", "width", "heads", "encoder_depth", "decoder_depth", "num_tokens",
                          "token_dim", "buffer_size", "mrar")},
              "weights": args.ckpt or "random"}
    if args.measure_memory:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        run()
        synchronize(device)
        result.update(seconds=round(time.perf_counter() - t0, 2), weight_bytes=weight_bytes,
                      limit_bytes=weight_bytes + 2 * 2**30)
        if cuda:  # the allocator's peak: weights + activations, without the CUDA context
            peak = result["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        else:
            result["rss_before_model_bytes"] = rss_before
            peak = result["peak_rss_bytes"] = peak_rss_bytes()
        result["peak_over_weights_gib"] = round((peak - weight_bytes) / 2**30, 3)
        result["within_limit"] = peak < result["limit_bytes"]
        result.update(machine_info(threads, device))
        print(json.dumps(result))
        return

    flops = count_flops(run)  # eager, before any compile: the counter sees every aten op
    if args.compile:
        model = prepare(model, device, args.precision, compile=True)
    times = time_runs(run, args.repeats, warmup=1 if not args.compile else 2, device=device)
    s = statistics.median(times)
    peak = matmul_peak(DTYPES[args.precision], device, n=args.peak_size)
    achieved = flops / s / 1e9
    result.update(
        s_per_image=round(s / args.batch, 4),
        times_s=[round(t, 3) for t in times],
        network_evaluations=args.sampling_steps * rounds,
        evaluation_batch=args.batch * (2 if args.cfg != 1.0 else 1),
        flops_per_image=flops // args.batch,
        achieved_gflops=float(f"{achieved:.4g}"),
        matmul_peak_gflops=float(f"{peak:.4g}"),
        ratio_to_peak=float(f"{achieved / peak:.4g}"),  # significant digits: small ratios keep theirs
    )
    result.update(machine_info(threads, device))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
