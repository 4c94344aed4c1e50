#!/usr/bin/env python3
"""The PyTorch peer for `optc bench`: torch.optim.AdamW on the CPU, timed the same way.

Not run in CI. Run it back to back with `optc bench` in the same session and compare ratios,
never absolute times from different sessions (see BENCHMARKS.md).

    python bench/torch_adamw.py                      # 64M fp32 elements, one tensor, fused=True
    python bench/torch_adamw.py --shapes gpt2-small  # the 148 GPT-2 small tensors
    python bench/torch_adamw.py --impl foreach       # or forloop
    python bench/torch_adamw.py --dtype bfloat16     # bf16 params, grads and states (fused)

Prints one human line per configuration and, with --json, one JSON object as the last line
(median ms/step, elements/s, bytes/s at AdamW's 28 bytes/element). A bandwidth probe like optc's
cannot be written in Python, so no fraction of a probe is reported here.
"""

import argparse
import json
import statistics
import time

import torch

BYTES_PER_ELEMENT = 28  # fp32 AdamW reads p, g, m, v and writes p, m, v


def gpt2_small():
    """The parameter shapes of Hugging Face GPT2LMHeadModel (tied head): 148 tensors, 124,439,808 parameters."""
    d, ff, vocab, ctx = 768, 3072, 50257, 1024
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64 * 1024 * 1024, help="total elements (default 64M)")
    ap.add_argument("--tensors", type=int, default=1, help="split --n over this many tensors")
    ap.add_argument("--shapes", choices=["gpt2-small"], help="a preset shape list instead of --n")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--impl", choices=["fused", "foreach", "forloop"], default="fused")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="params, grads and states (torch keeps one dtype for all; bf16: 14 bytes/element)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.shapes == "gpt2-small":
        shapes = gpt2_small()
    else:
        k = args.tensors
        shapes = [(args.n // k + (1 if i < args.n % k else 0),) for i in range(k)]
    dtype = getattr(torch, args.dtype)
    params = [torch.full(s, 0.5, dtype=dtype) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    elements = sum(p.numel() for p in params)

    kw = {"fused": args.impl == "fused", "foreach": args.impl == "foreach"}
    if args.impl == "forloop":
        kw = {"foreach": False}
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **kw)

    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
    med = statistics.median(times)
    report = {
        "impl": f"torch {torch.__version__} AdamW({args.impl}, {args.dtype})",
        "elements": elements,
        "tensors": len(shapes),
        "threads": torch.get_num_threads(),
        "iters": len(times),
        "step_s": med,
        "step_min_s": min(times),
        "elements_per_s": elements / med,
        "bytes_per_s": BYTES_PER_ELEMENT * (0.5 if args.dtype == "bfloat16" else 1) * elements / med,
    }
    print(
        f"{report['impl']}: {elements} elements in {len(shapes)} tensor(s), {report['threads']} thread(s): "
        f"{med * 1e3:.3f} ms/step (median of {len(times)}, min {min(times) * 1e3:.3f} ms), "
        f"{report['elements_per_s'] / 1e9:.3f} G elements/s, {report['bytes_per_s'] / 1e9:.1f} GB/s"
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
