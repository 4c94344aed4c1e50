"""One torch.optim.Muon + torch.optim.AdamW step over the GPT-2 small shapes on the CPU, the
reference for runtime/examples/muon_step.rs (BENCHMARKS.md): Muon on the 2-D tensors, AdamW
(foreach=False) on the others, the same lr as the optc run; the Newton-Schulz share is the step
minus the same step with ns_steps=0. `--f32` runs torch's Newton-Schulz in float32 (its own code
with torch.bfloat16 replaced), as optc's default. Prints one JSON line.

Run: /work/venv/bin/python bench/torch_muon.py --threads 2 --steps 3 [--f32]
"""

import argparse
import inspect
import json
import time

import torch
import torch.optim._muon as muon_mod

D, FF, VOCAB, CTX = 768, 3072, 50257, 1024


def gpt2_small():
    shapes = [("wte.weight", (VOCAB, D)), ("wpe.weight", (CTX, D))]
    for i in range(12):
        for n, s in [("ln_1.weight", (D,)), ("ln_1.bias", (D,)), ("attn.c_attn.weight", (D, 3 * D)),
                     ("attn.c_attn.bias", (3 * D,)), ("attn.c_proj.weight", (D, D)),
                     ("attn.c_proj.bias", (D,)), ("ln_2.weight", (D,)), ("ln_2.bias", (D,)),
                     ("mlp.c_fc.weight", (D, FF)), ("mlp.c_fc.bias", (FF,)),
                     ("mlp.c_proj.weight", (FF, D)), ("mlp.c_proj.bias", (D,))]:
            shapes.append((f"h.{i}.{n}", s))
    shapes += [("ln_f.weight", (D,)), ("ln_f.bias", (D,))]
    return shapes


def time_steps(steps, ns_steps):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) * 0.04 for _, s in gpt2_small()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    mats = [p for p in params if p.ndim == 2]
    rest = [p for p in params if p.ndim != 2]
    opt_m = torch.optim.Muon(mats, lr=0.02, ns_steps=ns_steps)
    opt_a = torch.optim.AdamW(rest, lr=1e-3, weight_decay=0.01, foreach=False)
    times = []
    for s in range(steps + 1):
        t0 = time.perf_counter()
        opt_m.step()
        opt_a.step()
        if s > 0:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--f32", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.f32:
        src = inspect.getsource(muon_mod._zeropower_via_newtonschulz).replace("torch.bfloat16", "torch.float32")
        ns = dict(muon_mod.__dict__)
        exec(src, ns)
        muon_mod._zeropower_via_newtonschulz = ns["_zeropower_via_newtonschulz"]
    full = time_steps(a.steps, 5)
    base = time_steps(a.steps, 0)
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "steps": a.steps,
                      "f32": a.f32, "step_s": round(full, 4), "no_ns_step_s": round(base, 4),
                      "ns_share": round((full - base) / full, 4)}))


if __name__ == "__main__":
    main()
