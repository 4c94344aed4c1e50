#!/usr/bin/env python3
"""The PyTorch peers of the staged rules for `optc bench`, timed like bench/torch_adamw.py.

Not run in CI. Run it back to back with `optc bench` in the same session (bench/pairs_staged.sh
does) and compare ratios, never absolute times from different sessions (see BENCHMARKS.md).

    python bench/torch_staged.py --peer adamw-clip               # clip_grad_norm_(params, 1) + AdamW(fused=True)
    python bench/torch_staged.py --peer lamb                     # pytorch_optimizer.Lamb, default settings
    python bench/torch_staged.py --peer adafactor                # torch.optim.Adafactor, default settings
    python bench/torch_staged.py --peer adamw-unscale            # GradScaler: unscale_ + AdamW(fused) with found_inf
    python bench/torch_staged.py --peer adamw-scaler             # GradScaler.step: AdamW(fused) with grad_scale and found_inf
    python bench/torch_staged.py --peer lamb --shapes gpt2-small # the 148 GPT-2 small tensors

`--n` elements are split over `--tensors` 1-D tensors (as `optc bench --n` does; Adafactor then
takes its unfactored vector path); `--shape 4096,4096` gives one tensor of that shape (repeatable,
as `optc bench --shape`); `--shapes gpt2-small` gives the matrices and vectors of GPT-2
small, where Adafactor factors every matrix. Each peer runs the library's default code path for
CPU tensors (Lamb: pytorch_optimizer's foreach path; Adafactor: torch's for-loop, its default;
AdamW: fused=True). A timed step is `clip_grad_norm_` (adamw-clip only) plus `opt.step()`; the
gradients are refilled outside the timed region, because clipping scales them in place.

The loss-scaling peers (`docs/loss_scaling.md`) run `torch.amp.GradScaler("cpu")` (init_scale
2^16, its defaults) around `AdamW(fused=True)`, the gradients being 2^16 times 1e-3:
`adamw-unscale` times `scaler.unscale_(opt)` (one pass that checks and unscales g in place) then
`scaler.step(opt)` (the fused kernel gets `found_inf`) and `scaler.update()`; `adamw-scaler` times
`scaler.step(opt)` alone (a check pass over g with `inv_scale = 1`, then the fused kernel
unscales with `grad_scale` and skips on `found_inf`) and `scaler.update()`.

Prints one human line and, with --json, one JSON object as the last line (median s/step,
elements/s). No bandwidth probe: see bench/torch_adamw.py.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_adamw import gpt2_small  # noqa: E402

PEERS = ["adamw-clip", "lamb", "adafactor", "adamw-unscale", "adamw-scaler"]
SCALED = {"adamw-unscale", "adamw-scaler"}


def make_optimizer(peer, params):
    if peer == "adamw-clip" or peer in SCALED:
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, fused=True)
        what = {"adamw-clip": "clip_grad_norm_(1.0) + AdamW(fused)",
                "adamw-unscale": "GradScaler.unscale_ + AdamW(fused, found_inf) + update",
                "adamw-scaler": "GradScaler.step: AdamW(fused, grad_scale, found_inf) + update"}[peer]
        return opt, "torch {} {}".format(torch.__version__, what)
    if peer == "lamb":
        import importlib.metadata

        import pytorch_optimizer

        opt = pytorch_optimizer.Lamb(params)
        return opt, "pytorch_optimizer {} Lamb".format(importlib.metadata.version("pytorch_optimizer"))
    if peer == "adafactor":
        return torch.optim.Adafactor(params), "torch {} Adafactor".format(torch.__version__)
    raise SystemExit(f"unknown peer {peer}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=PEERS, required=True)
    ap.add_argument("--n", type=int, default=16 * 1024 * 1024, help="total elements (default 16M)")
    ap.add_argument("--tensors", type=int, default=1, help="split --n over this many 1-D tensors")
    ap.add_argument("--shapes", choices=["gpt2-small"], help="a preset shape list instead of --n")
    ap.add_argument("--shape", action="append", default=[], metavar="D1,D2,...",
                    help="a tensor of this shape instead of --n (repeatable), as `optc bench --shape`")
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="adamw-clip: clip_grad_norm_'s max_norm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.n < 1 or args.tensors < 1 or args.iters < 1 or args.threads < 1 or args.tensors > args.n:
        raise SystemExit("--n, --tensors, --iters and --threads must be >= 1, and --tensors <= --n")

    torch.set_num_threads(args.threads)
    if args.shapes == "gpt2-small":
        shapes = gpt2_small()
    elif args.shape:
        shapes = [tuple(int(d) for d in s.split(",")) for s in args.shape]
        if any(d < 1 for s in shapes for d in s):
            raise SystemExit("--shape: dims must be >= 1")
    else:
        k = args.tensors
        shapes = [(args.n // k + (1 if i < args.n % k else 0),) for i in range(k)]
    params = [torch.full(s, 0.5, dtype=torch.float32) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    elements = sum(p.numel() for p in params)
    opt, impl = make_optimizer(args.peer, params)
    clip = args.peer == "adamw-clip"
    scaler = torch.amp.GradScaler("cpu") if args.peer in SCALED else None
    if scaler is not None:
        scaler.scale(torch.ones(()))  # the scaler's state is made by its first scale()
    g = 1e-3 * (scaler.get_scale() if scaler else 1.0)

    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            for p in params:
                p.grad.fill_(g)
            t0 = time.perf_counter()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            if scaler is not None:
                if args.peer == "adamw-unscale":
                    scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
    med = statistics.median(times)
    report = {
        "impl": impl,
        "peer": args.peer,
        "elements": elements,
        "tensors": len(shapes),
        "threads": torch.get_num_threads(),
        "iters": len(times),
        "step_s": med,
        "step_min_s": min(times),
        "elements_per_s": elements / med,
    }
    print(
        f"{impl}: {elements} elements in {len(shapes)} tensor(s), {report['threads']} thread(s): "
        f"{med * 1e3:.3f} ms/step (median of {len(times)}, min {min(times) * 1e3:.3f} ms), "
        f"{report['elements_per_s'] / 1e9:.3f} G elements/s"
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
