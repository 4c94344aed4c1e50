#!/usr/bin/env python3
"""torch.optim.AdamW(fused=True) on the GPU, timed with CUDA events: the peer of
`optc bench adamw --target cuda` in the GPU check (docs/cuda.md, "The GPU check").

    python3 torch_adamw_cuda.py 16777216 gpt2-small        # one config per argument
    python3 torch_adamw_cuda.py --device cpu 4096           # the dry run's smoke test (wall clock)

A config is an element count (one fp32 tensor) or `gpt2-small` (the 148 GPT-2 small tensors of
bench/torch_adamw.py). For each, after --warmup steps, --iters steps are timed one by one (a CUDA
event before and after each step; their elapsed time), then a device-to-device copy of half the
step's bytes (a copy reads and writes each byte: 28 bytes per element in all, AdamW's traffic) is
timed the same way, in the same process. Prints one JSON object per config, one per line: median
step and copy seconds and `fraction_of_copy` (the step's bytes/s over the copy's), or `error`
when the config failed (the next config still runs).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

# bench/torch_adamw.py: beside this file in the bundle, two folders up in the repository.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from torch_adamw import BYTES_PER_ELEMENT, gpt2_small  # noqa: E402


def timed(fn, iters, warmup, device):
    """Median and minimum seconds of `fn()` over `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def run(config, args, device):
    shapes = gpt2_small() if config == "gpt2-small" else [(int(config),)]
    params = [torch.full(s, 0.5, dtype=torch.float32, device=device) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    elements = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, fused=True)
    with torch.no_grad():
        step_s, step_min_s = timed(opt.step, args.iters, args.warmup, device)
    # The copy: half the step's bytes, read once and written once.
    copy_elements = BYTES_PER_ELEMENT * elements // 8
    src = torch.ones(copy_elements, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy_s, _ = timed(lambda: dst.copy_(src), args.iters, args.warmup, device)
    copy_bytes = 8 * copy_elements
    del opt, params, src, dst
    report = {
        "impl": f"torch {torch.__version__.split('+')[0]} AdamW(fused)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "elements": elements,
        "tensors": len(shapes),
        "iters": args.iters,
        "step_s": step_s,
        "step_min_s": step_min_s,
        "bytes_per_s": BYTES_PER_ELEMENT * elements / step_s,
        "copy_s": copy_s,
        "copy_bytes": copy_bytes,
        "fraction_of_copy": (BYTES_PER_ELEMENT * elements / step_s) / (copy_bytes / copy_s),
    }
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="element counts or gpt2-small")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}), flush=True)
        return 1
    failed = False
    for config in args.configs:
        try:
            report = run(config, args, device)
        except (RuntimeError, ValueError) as e:  # out of memory, a bad config: report, go on
            failed = True
            report = {"config": config, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(report), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
