#!/bin/bash
# Back-to-back rounds for issue 13's storage-dtype figures: `optc bench adamw` with bf16 params,
# grads and states (14 B/element) against torch's fused AdamW in fp32 (28 B) and in bf16 (one dtype
# for everything), all in the same round, printed as BENCHMARKS.md table rows:
#   | round | optc bf16 ms/step | B/element | state B/param | kernel / probe | torch fp32 fused ms | torch bf16 fused ms | optc speed / torch fp32 | optc speed / torch bf16 |
# usage: [OPTC=path/to/optc] [PY=python-with-torch] [ITERS=10] bash bench/pairs_dtypes.sh ROUNDS [--n N]
# e.g.   bash bench/pairs_dtypes.sh 5 --n 16777216
set -euo pipefail
cd "$(dirname "$0")/.."
OPTC=${OPTC:-./target/release/optc}
PY=${PY:-python3}
ITERS=${ITERS:-10}
n=$1; shift
err=$(mktemp)
trap 'rm -f "$err"' EXIT
for i in $(seq 1 "$n"); do
  o=$("$OPTC" bench adamw --param-dtype bf16 --state-dtype bf16 "$@" --threads 2 --iters "$ITERS" --json 2>"$err" | tail -1) ||
    { echo "optc bench failed:" >&2; cat "$err" >&2; exit 1; }
  f=$("$PY" bench/torch_adamw.py "$@" --threads 2 --iters "$ITERS" --json 2>"$err" | tail -1) ||
    { echo "bench/torch_adamw.py failed:" >&2; cat "$err" >&2; exit 1; }
  b=$("$PY" bench/torch_adamw.py --dtype bfloat16 "$@" --threads 2 --iters "$ITERS" --json 2>"$err" | tail -1) ||
    { echo "bench/torch_adamw.py --dtype bfloat16 failed:" >&2; cat "$err" >&2; exit 1; }
  load=$(cut -d' ' -f1 /proc/loadavg)
  "$PY" - "$i" "$load" "$o" "$f" "$b" <<'PY'
import json, sys
i, load = sys.argv[1], sys.argv[2]
o, f, b = (json.loads(a) for a in sys.argv[3:6])
sb = o["state_bytes_per_param"]
print(f"| {i} (load {load}) | {o['step_s']*1e3:.1f} | {o['bytes_per_element']} | {sb} | {o['fraction_of_probe']:.2f} | "
      f"{f['step_s']*1e3:.1f} | {b['step_s']*1e3:.1f} | {f['step_s']/o['step_s']:.2f} | {b['step_s']/o['step_s']:.2f} |")
PY
done
