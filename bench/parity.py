#!/usr/bin/env python3
"""Parity rounds for one rule and shape: two optc builds, the PyTorch peer and the C probe, back to back.

Each round runs, one right after the other: `optc bench` with build A, the same with build B,
the rule's peer on torch's best CPU path (bench/peer.py), and the C-style probe
(bench/c_probe.c, compiled here with gcc) with the kernel's read/write shape over the same
number of elements in one tensor. It prints one markdown row per round and the medians:

    | A ms | A / in-run probe | B ms | B / in-run probe | peer ms | **B speed / peer** | A speed / peer | C probe ms | **B / C probe** |

Speeds are ratios of times in the same round (`peer ms / B ms`: above 1, optc is faster);
`B / C probe` is `C probe ms / B ms` (the C probe moves the same bytes per element as the
kernel). Not run in CI.

    OPTC_A=old/optc OPTC_B=new/optc .venv/bin/python bench/parity.py 5 adamw --n 67108864
    OPTC_A=... OPTC_B=... .venv/bin/python bench/parity.py 5 sgd --set momentum=0.9 --shapes gpt2-small

Environment: OPTC_A, OPTC_B (optc binaries; B defaults to $CARGO_TARGET_DIR/release/optc or
target/release/optc, A to B), PY (python with torch; default: this one), ITERS (timed steps
per run; 10), CC (gcc).
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def last_json(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if len(sys.argv) > 1 else 2)
    rounds = int(sys.argv[1])
    rule, rest = sys.argv[2], sys.argv[3:]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    b = os.environ.get("OPTC_B", str(pathlib.Path(target) / "release" / "optc"))
    a = os.environ.get("OPTC_A", b)
    py = os.environ.get("PY", sys.executable)
    iters = os.environ.get("ITERS", "10")
    common = ["--threads", "2", "--iters", iters]
    probe = pathlib.Path(tempfile.mkdtemp()) / "c_probe"
    subprocess.run([os.environ.get("CC", "gcc"), "-O3", "-march=native", "-fno-math-errno", "-fopenmp",
                    str(ROOT / "bench" / "c_probe.c"), "-o", str(probe)], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    print("| A ms | A / in-run probe | B ms | B / in-run probe | peer ms | **B speed / peer** | A speed / peer "
          "| C probe ms | **B / C probe** |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for _ in range(rounds):
        oa = last_json([a, "bench", rule, *rest, *common, "--json"])
        ob = last_json([b, "bench", rule, *rest, *common, "--json"])
        pe = last_json([py, str(ROOT / "bench" / "peer.py"), "--rule", rule, *rest, *common, "--json"])
        states = (ob["bytes_per_element"] - 12) // 8
        cp = last_json([str(probe), str(ob["elements"]), str(states), iters], env=env)
        r = (oa["step_s"], oa["fraction_of_probe"], ob["step_s"], ob["fraction_of_probe"], pe["step_s"],
             pe["step_s"] / ob["step_s"], pe["step_s"] / oa["step_s"], cp["pass_s"], cp["pass_s"] / ob["step_s"])
        rows.append(r)
        print("| " + " | ".join(f"{x * 1e3:.1f}" if i in (0, 2, 4, 7) else f"{x:.2f}" for i, x in enumerate(r)) + " |",
              flush=True)
    med = [statistics.median(c) for c in zip(*rows)]
    print("| **median** | " + " | ".join("" if i in (0, 2, 4, 7) else f"**{x:.2f}**" for i, x in enumerate(med)
                                         if i > 0) + " |")
    print(f"(rule {rule} {' '.join(rest)}; {ob['bytes_per_element']} B/element; peer {pe['impl']}; "
          f"load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
