#!/usr/bin/env bash
# Every search strategy on the same device (the local agent), dataset and
# budget, with several seeds, and the MobileNetV2 width sweep trained with
# the same recipe. Prints per run: final test accuracy, measured p50, budget
# met, wall time and device measurements, then the mean per strategy; and
# draws every run and the sweep on one Pareto plot (`edgeloop report`).
#
# Usage: scripts/bench-strategies.sh [--strategies gradient,reinforce,random,nao,unas] [--seeds 0,1]
#        [--fraction 0.7] [--dataset synthetic:1500,1000] [--epochs WARMUP,SEARCH,FINAL]
#        [--widths 0.35,0.5,0.75,1.0] [--out DIR] [-- EXTRA SEARCH FLAGS…]
# The budget is --fraction × the width-1.0 MobileNetV2's measured p50.
# Finished runs in --out are kept: rerunning continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
strategies=gradient,reinforce,random,nao,unas seeds=0,1 fraction=0.7 dataset=synthetic:1500,1000 epochs=10,15,15
widths=0.35,0.5,0.75,1.0 out="" extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --strategies) strategies=$2; shift 2 ;; --seeds) seeds=$2; shift 2 ;; --fraction) fraction=$2; shift 2 ;;
    --dataset) dataset=$2; shift 2 ;; --epochs) epochs=$2; shift 2 ;; --widths) widths=$2; shift 2 ;;
    --out) out=$2; shift 2 ;; --) shift; extra=("$@"); break ;;
    *) echo "unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
out=${out:-runs/bench-strategies}
IFS=, read -r warmup search final <<< "$epochs"
source scripts/local-agent.sh
bench_agent "$out"
device=(--device "$agent_url" --token-file "$agent_token_file")
recipe=(--space tiny --dataset "$dataset" --final-epochs "$final")

"$edgeloop" export --space tiny --baseline mbv2 --out "$out/mbv2.onnx" >/dev/null
mbv2_ms=$(steady_p50 "$edgeloop" "$python" "$out/mbv2.onnx" "${device[@]}")
budget=$($python -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[2]):.4f}')" "$mbv2_ms" "$fraction")
echo "budget: $budget ms p50 ($fraction × MobileNetV2's $mbv2_ms ms)" >&2

runs=()
for seed in ${seeds//,/ }; do
  [[ -f "$out/baselines-s$seed/baselines.csv" ]] ||
    "$edgeloop" baseline "${recipe[@]}" "${device[@]}" --seed "$seed" --widths "$widths" \
      --out "$out/baselines-s$seed" >/dev/null
  for strategy in ${strategies//,/ }; do
    run="$out/$strategy-s$seed"
    runs+=("$run")
    [[ -f "$run/result.json" ]] && continue
    resume=(); [[ -e "$run/checkpoint" || -e "$run/final.checkpoint" ]] && resume=(--resume)
    echo "$strategy, seed $seed" >&2
    "$edgeloop" search "${recipe[@]}" "${device[@]}" --seed "$seed" --budget-ms "$budget" --strategy "$strategy" \
      --warmup-epochs "$warmup" --epochs "$search" --out "$run" "${resume[@]}" "${extra[@]}" >/dev/null
  done
done
"$edgeloop" report "${runs[@]}" --baselines "$out/baselines-s${seeds%%,*}" --out "$out/report" >/dev/null

"$python" - "$budget" "${runs[@]}" <<'PY'
import json, statistics, sys
budget, runs = float(sys.argv[1]), sys.argv[2:]
rows = {}
print(f"strategies under {budget} ms p50")
print("| run | strategy | test accuracy % | measured p50 ms | met | wall s | device measurements |")
print("|---|---|---|---|---|---|---|")
for run in runs:
    r = json.load(open(f"{run}/result.json"))
    wall = r.get("search_seconds", 0) + r.get("final_seconds", 0)
    row = (100 * r["test_accuracy"], r["measured_latency_ms"], bool(r["budget_met"]), wall, r["device_measurements"])
    rows.setdefault(r["strategy"], []).append(row)
    print(f"| {run.rsplit('/', 1)[-1]} | {r['strategy']} | {row[0]:.2f} | {row[1]:.4f} | {row[2]} | {row[3]:.0f} | {row[4]} |")
print()
print("| strategy | mean accuracy % | mean p50 ms | met | mean wall s | mean device measurements |")
print("|---|---|---|---|---|---|")
for strategy, rs in rows.items():
    mean = lambda i: statistics.mean(r[i] for r in rs)
    met = sum(r[2] for r in rs)
    print(f"| {strategy} | {mean(0):.2f} | {mean(1):.4f} | {met}/{len(rs)} | {mean(3):.0f} | {mean(4):.1f} |")
PY
echo "Pareto plot: $out/report/pareto.png" >&2
