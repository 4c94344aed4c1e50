#!/usr/bin/env python3
"""The whole table in one command: every stdlib rule against its PyTorch peer, back to back.

For every rule `optc list` shows (and SGD once more with momentum 0.9), at 16M elements in one
tensor and on the 148 tensors of GPT-2 small, it makes PAIRS back-to-back pairs of
`optc bench RULE ... --threads 2 --json` and of the rule's peer on torch's best CPU path
(bench/peer.py: fused where torch has a fused kernel, foreach otherwise; pytorch_optimizer for the
rules torch lacks), and reports per cell the median over the pairs of the kernel's fraction of
its in-run bandwidth probe and of `peer time / optc time` (above 1: optc is faster), with the
range over the pairs. It also tabulates optc's compile time from source to a runnable kernel
(`optc bench`'s `compile` object, medians over the 16M runs). The tables are printed and, when
the whole table ran (no ONLY, every shape), written into BENCHMARKS.md between the markers
`<!-- bench/table.py begin -->` and `<!-- bench/table.py end -->` (atomically), with the
command, the commit, the machine, the load average and the wall time.

    cargo build --release -p optc --bin optc
    .venv/bin/python bench/table.py            # the venv of BENCHMARKS.md ("The PyTorch venv")
    ONLY=adamw,sgd PAIRS=5 .venv/bin/python bench/table.py   # some rules only; not written

Environment: OPTC (the optc binary; default $CARGO_TARGET_DIR/release/optc, else
target/release/optc), PY (the python with torch for the peers; default: this one), PAIRS (5),
ITERS (timed steps per run at 16M; 10), GPT2_ITERS (on GPT-2 small; 5), SHAPES (`16m`, `gpt2` or
both, comma-separated; default both), ONLY (comma-separated rule names). Not run in CI.
"""

import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
BEGIN = "<!-- bench/table.py begin -->"
END = "<!-- bench/table.py end -->"
THREADS = 2
TIMEOUT_S = 600
# Rows beyond one per rule at its defaults: (rule, --set values).
EXTRA_ROWS = {"sgd": [["momentum=0.9"]]}
SHAPES = {
    "16m": ("16M elements, one tensor", ["--n", str(16 * 1024 * 1024)]),
    "gpt2": ("GPT-2 small, 148 tensors", ["--shapes", "gpt2-small"]),
}


def env_int(name, default):
    v = os.environ.get(name, "")
    try:
        n = int(v) if v else default
    except ValueError:
        raise SystemExit(f"{name}={v}: expected a whole number")
    if n < 1:
        raise SystemExit(f"{name}={v}: must be at least 1")
    return n


def optc_binary():
    if os.environ.get("OPTC"):
        return os.environ["OPTC"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(pathlib.Path(target) / "release" / "optc")


def rule_names(optc):
    """The stdlib rules, in `optc list` order (names are the unindented lines)."""
    out = subprocess.run([optc, "list"], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line and not line[0].isspace()]


def rows(names, only):
    out = []
    for name in names:
        if only and name not in only:
            continue
        out.append((name, []))
        out.extend((name, sets) for sets in EXTRA_ROWS.get(name, []))
    return out


def label(rule, sets):
    return " ".join([rule] + [f"--set {s}" for s in sets])


def first_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def last_json(stdout):
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def run_cell(optc, py, rule, sets, shape_args, pairs, iters):
    """PAIRS back-to-back pairs of optc bench and the peer; returns (pairs, error)."""
    set_args = [a for s in sets for a in ("--set", s)]
    peer_cmd = [py, str(ROOT / "bench" / "peer.py"), "--rule", rule, *set_args, *shape_args,
                "--threads", str(THREADS), "--iters", str(iters), "--warmup", "2", "--serve"]
    optc_cmd = [optc, "bench", rule, *set_args, *shape_args, "--threads", str(THREADS),
                "--iters", str(iters), "--warmup", "2", "--json"]
    peer = subprocess.Popen(peer_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = peer.stdout.readline().strip()
        if ready != "ready":
            peer.stdin.close()
            return [], f"peer: {first_line(peer.stderr.read())}"
        done = []
        for _ in range(pairs):
            o = subprocess.run(optc_cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
            if o.returncode != 0:
                return done, f"optc: {first_line(o.stderr)}"
            oj = last_json(o.stdout)
            peer.stdin.write("step\n")
            peer.stdin.flush()
            line = peer.stdout.readline()
            if not line:
                return done, f"peer: {first_line(peer.stderr.read())}"
            done.append((oj, json.loads(line)))
        return done, None
    finally:
        if peer.stdin and not peer.stdin.closed:
            peer.stdin.close()
        try:
            peer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()


def med_range(xs, fmt="{:.2f}"):
    if not xs:
        return ""
    m = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def git_commit():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def peer_versions(py):
    code = ("import torch, importlib.metadata as m; "
            "print(torch.__version__.split('+')[0], m.version('pytorch_optimizer'))")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{py} cannot import torch and pytorch_optimizer: {first_line(out.stderr)}")
    return out.stdout.split()


def render(results, shapes, meta):
    """The markdown of both tables."""
    head = ["rule", "peer (torch's best CPU path)", "B/element"]
    for key in shapes:
        name = SHAPES[key][0]
        head += [f"{name}: kernel / probe", f"{name}: **optc speed / peer**"]
    lines = [
        f"Written by `{meta['command']}` on {meta['date']} (commit {meta['commit']}): {meta['pairs']} "
        f"back-to-back pairs per cell, `--threads {THREADS}` on both sides, `--iters {meta['iters']}` at 16M and "
        f"`--iters {meta['gpt2_iters']}` on GPT-2 small (medians of steps within a run; each cell is the median over "
        f"the pairs, with their range). torch {meta['torch']}, pytorch_optimizer {meta['po']}; {meta['cpu']}, "
        f"{os.cpu_count()} cores; load average (1 min) {meta['load']} during the run; wall time {meta['wall']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        cells = [f"`{r['label']}`", r["peer"] or "", str(r["bpe"] or "")]
        for key in shapes:
            c = r["cells"].get(key)
            if c is None:
                cells += ["", ""]
            elif c["error"] and not c["pairs"]:
                cells += [f"— ({c['error']})", ""]
            else:
                fr = [o["fraction_of_probe"] for o, _ in c["pairs"]]
                sp = [p["step_s"] / o["step_s"] for o, p in c["pairs"]]
                note = f" [{len(c['pairs'])} pairs; then: {c['error']}]" if c["error"] else ""
                cells += [med_range(fr), f"**{med_range(sp)}**{note}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Compile time from source to a runnable CPU kernel (`optc bench`'s `compile` object: medians in ms "
        "over repetitions in each run, then the median over the runs of the first shape). The phases are timed "
        "one by one and add up to about the total; \"every flag set\" is `Rule::parse` compiling each flag "
        "combination once to report errors up front; JIT includes the lowering to Cranelift IR.",
        "",
        "| rule | **total ms** | parse | check | every flag set | specialize | JIT | of which CLIF lowering |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = ["total_s", "parse_s", "check_s", "flag_sets_s", "specialize_s", "jit_s", "clif_s"]
    for r in results:
        comp = next((c["pairs"] for c in (r["cells"].get(k) for k in shapes) if c and c["pairs"]), [])
        comp = [o["compile"] for o, _ in comp if "compile" in o]
        if not comp or r["sets"]:
            continue
        vals = [statistics.median(c[k] for c in comp) * 1e3 for k in keys]
        cells = [f"**{vals[0]:.2f}**"] + [f"{v:.2f}" for v in vals[1:]]
        lines.append(f"| `{r['rule']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_benchmarks(text):
    """Replaces the text between the markers of BENCHMARKS.md, atomically (temp file, fsync,
    rename)."""
    doc = BENCHMARKS.read_text()
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        raise SystemExit(f"{BENCHMARKS}: expected one `{BEGIN}` line before one `{END}` line")
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{BEGIN}\n{text}{END}{after}"
    tmp = BENCHMARKS.with_name(BENCHMARKS.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, BENCHMARKS)
    dfd = os.open(BENCHMARKS.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def main():
    if len(sys.argv) > 1:
        print(__doc__)
        raise SystemExit(0 if sys.argv[1] in ("-h", "--help") else 2)
    optc = optc_binary()
    if not os.access(optc, os.X_OK):
        raise SystemExit(f"no optc binary at {optc}: run `cargo build --release -p optc --bin optc` or set OPTC")
    py = os.environ.get("PY", sys.executable)
    pairs = env_int("PAIRS", 5)
    iters = env_int("ITERS", 10)
    gpt2_iters = env_int("GPT2_ITERS", 5)
    only = {s.strip() for s in os.environ.get("ONLY", "").split(",") if s.strip()}
    shapes = [s.strip() for s in os.environ.get("SHAPES", "16m,gpt2").split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"SHAPES: unknown shape `{s}` (known: {', '.join(SHAPES)})")
    names = rule_names(optc)
    unknown = only - set(names)
    if unknown:
        raise SystemExit(f"ONLY: no stdlib rule {', '.join(sorted(unknown))} (optc list has {', '.join(names)})")
    torch_v, po_v = peer_versions(py)

    commit = git_commit()  # before the run: BENCHMARKS.md may be edited while it runs
    start = time.monotonic()
    loads = [os.getloadavg()[0]]
    results = []
    for rule, sets in rows(names, only):
        r = {"rule": rule, "sets": sets, "label": label(rule, sets), "peer": None, "bpe": None, "cells": {}}
        for key in shapes:
            shape_args = SHAPES[key][1]
            n_iters = gpt2_iters if key == "gpt2" else iters
            done, err = run_cell(optc, py, rule, sets, shape_args, pairs, n_iters)
            loads.append(os.getloadavg()[0])
            r["cells"][key] = {"pairs": done, "error": err}
            if done:
                r["peer"] = done[0][1]["impl"]
                r["bpe"] = done[0][0]["bytes_per_element"]
            sp = [p["step_s"] / o["step_s"] for o, p in done]
            print(f"{r['label']:<28} {key:<5} speed/peer {med_range(sp):<22} {err or ''}", file=sys.stderr,
                  flush=True)
        results.append(r)
    wall = time.monotonic() - start

    env = [f"{k}={os.environ[k]}" for k in ("PAIRS", "ITERS", "GPT2_ITERS", "SHAPES", "ONLY") if k in os.environ]
    meta = {
        "command": " ".join(env + ["python", "bench/table.py"]),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "pairs": pairs,
        "iters": iters,
        "gpt2_iters": gpt2_iters,
        "torch": torch_v,
        "po": po_v,
        "cpu": cpu_model(),
        "load": f"{min(loads):.1f}–{max(loads):.1f}",
        "wall": f"{wall / 60:.1f} min",
    }
    text = render(results, shapes, meta)
    print(text)
    if only or set(shapes) != set(SHAPES):
        print("(ONLY or SHAPES given: BENCHMARKS.md not written)", file=sys.stderr)
    else:
        write_benchmarks(text)
        print(f"written into {BENCHMARKS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
