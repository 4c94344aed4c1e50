#!/usr/bin/env python3
"""The PyTorch peer of any stdlib rule for `optc bench`, on torch's best CPU path, timed like
bench/torch_adamw.py.

Not run in CI. The reference class of each rule and the options pinned for it come from
tools/fixtures/rules.py (the classes the fixtures are generated from); only the code path is
changed here, to the fastest one the class has on the CPU: `fused=True` where the class has a
fused kernel (torch's Adam, AdamW, SGD, Adagrad), else `foreach=True` (the multi-tensor path of
torch.optim and of pytorch_optimizer). Hypers and flags take the reference class's defaults,
which equal the stdlib rule's (tools/fixtures/defaults.json), unless `--set` changes them, with
optc's names (`--set momentum=0.9`, `--set beta1=0.8`, `--set amsgrad=true`).

    python bench/peer.py --rule adamw                        # 16M elements, one tensor
    python bench/peer.py --rule sgd --set momentum=0.9 --shapes gpt2-small
    python bench/peer.py --rule lion --serve                 # one JSON line per line read on stdin

`adamsgd` has no reference class (no torch class switches from Adam to SGD); its peer is its
first phase, torch's fused Adam. With `--serve` the peer builds its tensors and optimizer once,
runs `--warmup` steps, prints `ready`, and then, for every line read on standard input, times
`--iters` more steps and prints one JSON object (bench/table.py uses this to make back-to-back
pairs with `optc bench` without paying torch's start-up for each pair). Without it, one JSON object
is printed as the last line with --json.
"""

import argparse
import inspect
import json
import pathlib
import statistics
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools" / "fixtures"))
from torch_adamw import gpt2_small  # noqa: E402

# Rules without a reference class in tools/fixtures/rules.py, and the peer used instead.
STAND_INS = {"adamsgd": "adam"}


def reference(rule):
    """The rule's reference spec from tools/fixtures/rules.py (imported lazily: it imports
    pytorch_optimizer)."""
    from rules import RULES

    name = STAND_INS.get(rule, rule)
    if name not in RULES:
        raise SystemExit(f"no PyTorch peer for rule `{rule}` (tools/fixtures/rules.py has {', '.join(RULES)})")
    return RULES[name]


def parse_sets(spec, sets):
    """`--set NAME=VALUE` in optc's names, split into hypers and flags of the reference."""
    hypers, flags = {}, {}
    for s in sets:
        name, sep, value = s.partition("=")
        if not sep:
            raise SystemExit(f"--set {s}: expected NAME=VALUE")
        if name in spec["flags"]:
            if value not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {s}: flag `{name}` takes true or false")
            flags[name] = value in ("true", "1")
        elif name in spec["hypers"]:
            hypers[name] = float(value)
        else:
            raise SystemExit(f"--set {s}: the peer {spec['cls'].__name__} has no hyper or flag `{name}`")
    return hypers, flags


def best_path(cls):
    """The fastest CPU code path `cls` offers, as keyword arguments and a label."""
    params = inspect.signature(cls).parameters
    if "fused" in params:
        return {"fused": True, "foreach": False}, "fused"
    if "foreach" in params:
        return {"foreach": True}, "foreach"
    return {}, "for-loop"


def kwargs_for(spec, hypers, flags):
    """The class's keyword arguments: its pinned options, then the best path, then `--set`."""
    kw = {k: v for k, v in spec["pinned"].items() if k not in ("fused", "foreach")}
    path, label = best_path(spec["cls"])
    kw.update(path)
    pairs = {n: (k, i) for k, names in spec.get("pairs", {}).items() for i, n in enumerate(names)}
    defaults = inspect.signature(spec["cls"]).parameters
    for name, value in hypers.items():
        if name in pairs:
            key, i = pairs[name]
            pair = list(kw.get(key, defaults[key].default))
            pair[i] = value
            kw[key] = tuple(pair)
        elif name in ("beta1", "beta2"):
            betas = list(kw.get("betas", defaults["betas"].default))
            betas[0 if name == "beta1" else 1] = value
            kw["betas"] = tuple(betas)
        else:
            kw[name] = value
    kw.update(flags)
    return kw, label


def describe(spec, label):
    cls = spec["cls"]
    module = cls.__module__.split(".")[0]
    if module == "torch":
        version = torch.__version__.split("+")[0]
        return f"torch {version} {cls.__name__}({label})"
    import importlib.metadata

    return f"{module} {importlib.metadata.version(module)} {cls.__name__}({label})"


def timed_steps(opt, n):
    times = []
    with torch.no_grad():
        for _ in range(n):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rule", required=True, help="a stdlib rule's name")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--n", type=int, default=16 * 1024 * 1024, help="total elements (default 16M)")
    ap.add_argument("--tensors", type=int, default=1, help="split --n over this many 1-D tensors")
    ap.add_argument("--shapes", choices=["gpt2-small"], help="a preset shape list instead of --n")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--serve", action="store_true", help="time --iters steps per line on stdin")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.n < 1 or args.tensors < 1 or args.iters < 1 or args.threads < 1 or args.tensors > args.n:
        raise SystemExit("--n, --tensors, --iters and --threads must be >= 1, and --tensors <= --n")

    spec = reference(args.rule)
    hypers, flags = parse_sets(spec, args.set)
    kw, label = kwargs_for(spec, hypers, flags)
    impl = describe(spec, label)

    torch.set_num_threads(args.threads)
    if args.shapes == "gpt2-small":
        shapes = gpt2_small()
    else:
        k = args.tensors
        shapes = [(args.n // k + (1 if i < args.n % k else 0),) for i in range(k)]
    params = [torch.full(s, 0.5, dtype=torch.float32) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    elements = sum(p.numel() for p in params)
    opt = spec["cls"](params, **kw)

    def report(times):
        med = statistics.median(times)
        return {
            "impl": impl,
            "rule": args.rule,
            "elements": elements,
            "tensors": len(shapes),
            "threads": torch.get_num_threads(),
            "iters": len(times),
            "step_s": med,
            "step_min_s": min(times),
            "elements_per_s": elements / med,
        }

    timed_steps(opt, args.warmup)
    if args.serve:
        print("ready", flush=True)
        for _ in sys.stdin:
            print(json.dumps(report(timed_steps(opt, args.iters))), flush=True)
        return
    r = report(timed_steps(opt, args.iters))
    print(
        f"{impl}: {elements} elements in {len(shapes)} tensor(s), {r['threads']} thread(s): "
        f"{r['step_s'] * 1e3:.3f} ms/step (median of {r['iters']}, min {r['step_min_s'] * 1e3:.3f} ms), "
        f"{r['elements_per_s'] / 1e9:.3f} G elements/s"
    )
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
