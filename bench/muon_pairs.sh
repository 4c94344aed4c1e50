#!/bin/bash
# Back-to-back pairs of one Muon step over GPT-2 small: optc (runtime/examples/muon_step.rs,
# Newton–Schulz in f32) then torch.optim.Muon + AdamW (bench/torch_muon.py; bf16 as shipped, and
# with F32=1 also its Newton–Schulz in float32), printed as BENCHMARKS.md table rows with the load
# average before each pair. Medians over the pairs are printed last.
# usage: bash bench/muon_pairs.sh PAIRS [STEPS]
#   needs $CARGO_TARGET_DIR/release/examples/muon_step (or target/...):
#   cargo build --release -p optc-runtime --example muon_step;  PY=/work/venv/bin/python
cd "$(dirname "$0")/.."
n=${1:-5}
steps=${2:-1}
bin="${CARGO_TARGET_DIR:-target}/release/examples/muon_step"
[[ -x "$bin" ]] || { echo "muon_pairs: build $bin first" >&2; exit 1; }
PY=${PY:-python3}
rows=()
echo "| pair | load (1 min) | optc step (s) | optc NS share | optc NS GFLOP/s | gemm 2048³ GFLOP/s | torch bf16 step (s) | torch NS share | optc / torch bf16 |$( [[ -n $F32 ]] && echo " torch f32 step (s) | optc / torch f32 |")"
echo "|---|---|---|---|---|---|---|---|---|$( [[ -n $F32 ]] && echo "---|---|")"
for i in $(seq 1 "$n"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  o=$("$bin" --threads 2 --steps "$steps" | tail -1)
  t=$($PY bench/torch_muon.py --threads 2 --steps "$steps" | tail -1)
  f='{}'
  [[ -n $F32 ]] && f=$($PY bench/torch_muon.py --threads 2 --steps "$steps" --f32 | tail -1)
  row=$(python3 - "$i" "$load" "$o" "$t" "$f" <<'PY'
import json, sys
i, load = sys.argv[1], sys.argv[2]
o, t, f = (json.loads(a) for a in sys.argv[3:6])
cells = [i, load, f"{o['step_s']:.2f}", f"{o['ns_share']:.3f}", f"{o['ns_gflops']:.1f}",
         f"{o['gemm_peak_gflops']:.1f}", f"{t['step_s']:.2f}", f"{t['ns_share']:.3f}",
         f"{o['step_s'] / t['step_s']:.2f}"]
if f:
    cells += [f"{f['step_s']:.2f}", f"{o['step_s'] / f['step_s']:.2f}"]
print("| " + " | ".join(cells) + " |")
PY
)
  echo "$row"
  rows+=("$row")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [[c.strip() for c in l.strip().strip("|").split("|")] for l in sys.stdin if l.strip()]
cols = list(zip(*rows))
med = ["median", "-"] + [f"{st.median(float(x) for x in c):.3g}" for c in cols[2:]]
print("| " + " | ".join(med) + " |")
'
