#!/usr/bin/env python3
"""The PyTorch peers of the hyper-specialized kernel variants for `optc bench`, timed like
bench/torch_adamw.py: plain SGD (momentum 0) and RMSprop without momentum.

Not run in CI. Run it back to back with `optc bench` in the same session (bench/pairs_variants.sh
does) and compare ratios, never absolute times from different sessions (see BENCHMARKS.md).

    python bench/torch_variants.py --peer sgd        # torch.optim.SGD(momentum=0, fused=True)
    python bench/torch_variants.py --peer rmsprop    # torch.optim.RMSprop(momentum=0), foreach (its CPU default; torch has no fused RMSprop)

`--n` elements are split over `--tensors` 1-D tensors, as `optc bench --n` does. Prints one human
line and, with --json, one JSON object as the last line (median s/step, elements/s).
"""

import argparse
import json
import statistics
import time

import torch

PEERS = {
    "sgd": lambda ps: (torch.optim.SGD(ps, lr=1e-3, momentum=0, fused=True), "SGD(momentum=0, fused)"),
    "rmsprop": lambda ps: (torch.optim.RMSprop(ps, lr=1e-2, momentum=0, foreach=True), "RMSprop(momentum=0, foreach)"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=sorted(PEERS), required=True)
    ap.add_argument("--n", type=int, default=16 * 1024 * 1024, help="total elements (default 16M)")
    ap.add_argument("--tensors", type=int, default=1, help="split --n over this many 1-D tensors")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    k = args.tensors
    shapes = [(args.n // k + (1 if i < args.n % k else 0),) for i in range(k)]
    params = [torch.full(s, 0.5, dtype=torch.float32) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt, what = PEERS[args.peer](params)
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            opt.step()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
    med = statistics.median(times)
    elements = sum(p.numel() for p in params)
    report = {
        "impl": f"torch {torch.__version__} {what}",
        "elements": elements,
        "tensors": len(shapes),
        "threads": torch.get_num_threads(),
        "iters": len(times),
        "step_s": med,
        "step_min_s": min(times),
        "elements_per_s": elements / med,
    }
    print(f"{report['impl']}: {med * 1e3:.3f} ms/step (median of {len(times)}), {elements / med / 1e9:.3f} G elements/s")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
