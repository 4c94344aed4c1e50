#!/bin/bash
# Back-to-back pairs of `optc bench` on the staged rules and their PyTorch peers (bench/torch_staged.py),
# printed as BENCHMARKS.md table rows:
#   | what | optc ms/step | in-run probe ms | kernel / probe | B/element | peer ms/step | optc speed / peer |
# usage: [OPTC=path/to/optc] [PY=python-with-torch] [ITERS=10] [ONLY=peer] bash bench/pairs_staged.sh PAIRS SHAPE_ARGS...
# ONLY: run one pair only (adamw-clip, lamb, adafactor, adamw-unscale or adamw-scaler).
# e.g.   bash bench/pairs_staged.sh 3 --n 16777216
#        bash bench/pairs_staged.sh 3 --shapes gpt2-small
# SHAPE_ARGS go to both sides (--n N [--tensors K] or --shapes gpt2-small).
set -euo pipefail
cd "$(dirname "$0")/.."
OPTC=${OPTC:-./target/release/optc}
PY=${PY:-python3}
ITERS=${ITERS:-10}
ONLY=${ONLY:-}
n=$1; shift
err=$(mktemp)
trap 'rm -f "$err"' EXIT
pairs=(
  "adamw --set max_grad_norm=1|adamw-clip"
  "lamb|lamb"
  "adafactor|adafactor"
  "adamw --loss-scale dynamic|adamw-unscale"
  "adamw --loss-scale dynamic|adamw-scaler"
)
for i in $(seq 1 "$n"); do
  for pair in "${pairs[@]}"; do
    rule=${pair%|*}; peer=${pair#*|}
    [[ -z $ONLY || $ONLY == "$peer" ]] || continue
    # shellcheck disable=SC2086 # $rule holds the rule and its --set options
    # stderr is kept apart (progress bars) and shown only when a side fails.
    o=$("$OPTC" bench $rule "$@" --threads 2 --iters "$ITERS" --json 2>"$err" | tail -1) ||
      { echo "optc bench $rule failed:" >&2; cat "$err" >&2; exit 1; }
    t=$("$PY" bench/torch_staged.py --peer "$peer" "$@" --threads 2 --iters "$ITERS" --json 2>"$err" | tail -1) ||
      { echo "bench/torch_staged.py --peer $peer failed:" >&2; cat "$err" >&2; exit 1; }
    "$PY" - "$rule" "$o" "$t" <<'PY'
import json, sys
what, o, t = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"| `{what}` | {o['step_s']*1e3:.1f} | {o['probe_s']*1e3:.1f} | {o['fraction_of_probe']:.2f} | "
      f"{o['bytes_per_element']} | {t['step_s']*1e3:.1f} | {t['step_s']/o['step_s']:.2f} |")
PY
  done
done
