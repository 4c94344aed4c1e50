#!/bin/bash
# Back-to-back pairs of optc bench and PyTorch fused AdamW, printed as BENCHMARKS.md table rows.
# usage: [TORCHARGS="--shapes gpt2-small"] bash bench/pairs.sh PAIRS OPTC_BENCH_ARGS...
# e.g.   bash bench/pairs.sh 5 --n 67108864   (needs target/release/optc and a python with torch: PY=...)
cd "$(dirname "$0")/.."
n=$1; shift
for i in $(seq 1 $n); do
  o=$(./target/release/optc bench adamw "$@" --threads 2 --iters 10 --json 2>/dev/null | tail -1)
  t=$(${PY:-python3} bench/torch_adamw.py $TORCHARGS --threads 2 --iters 10 --json 2>/dev/null | tail -1)
  python3 - "$o" "$t" <<'PY'
import json,sys
o=json.loads(sys.argv[1]); t=json.loads(sys.argv[2])
print(f"| {o['step_s']*1e3:.1f} | {o['probe_s']*1e3:.1f} | {o['fraction_of_probe']:.2f} | {t['step_s']*1e3:.1f} | {t['step_s']/o['step_s']:.2f} |")
PY
done
