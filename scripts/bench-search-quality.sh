#!/usr/bin/env bash
# Search quality: does a search meet its budget, use it, and beat the
# hand-scaled baseline (MobileNetV2's block in `tiny`'s layout, width
# swept)? On the local agent: budgets at fractions of the width-1.0
# baseline's measured p50, each searched with several seeds; the baseline
# sweep is trained with the same seeds and recipe. Prints per budget: found
# vs the best baseline width within the budget (mean ± std test accuracy),
# measured p50, budgets met, found p50 / budget.
#
# The setting is made hard enough that architectures differ: few training
# images (synthetic:1500,1000 by default) and short training, so accuracy
# does not saturate at ~98% for every arch as on the full synthetic set.
#
# Usage: scripts/bench-search-quality.sh [--runtime tract|ort] [--seeds 0,1,2]
#        [--fractions 0.5,0.7,0.9] [--dataset synthetic:1500,1000]
#        [--epochs WARMUP,SEARCH,FINAL] [--widths 0.35,0.5,0.75,1.0] [--out DIR]
# Finished runs in --out are kept: rerunning continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=tract seeds=0,1,2 fractions=0.5,0.7,0.9 dataset=synthetic:1500,1000 epochs=10,15,15
widths=0.35,0.5,0.75,1.0 out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runtime) runtime=$2; shift 2 ;; --seeds) seeds=$2; shift 2 ;; --fractions) fractions=$2; shift 2 ;;
    --dataset) dataset=$2; shift 2 ;; --epochs) epochs=$2; shift 2 ;; --widths) widths=$2; shift 2 ;;
    --out) out=$2; shift 2 ;; *) echo "unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
out=${out:-runs/bench-search-quality-$runtime}
IFS=, read -r warmup search final <<< "$epochs"
source scripts/local-agent.sh
bench_agent "$out"
device=(--device "$agent_url" --token-file "$agent_token_file" --runtime "$runtime")
recipe=(--space tiny --dataset "$dataset" --final-epochs "$final")

"$edgeloop" export --space tiny --baseline mbv2 --out "$out/mbv2.onnx" >/dev/null
mbv2_ms=$(steady_p50 "$edgeloop" "$python" "$out/mbv2.onnx" --device "$agent_url" --token-file "$agent_token_file" --runtime "$runtime")
echo "MobileNetV2 (tiny, width 1.0) on $runtime: $mbv2_ms ms p50 (the lowest of 3)" >&2

for seed in ${seeds//,/ }; do
  echo "baseline sweep, seed $seed" >&2
  "$edgeloop" baseline "${recipe[@]}" "${device[@]}" --seed "$seed" --widths "$widths" \
    --out "$out/baselines-s$seed" >/dev/null
  for fraction in ${fractions//,/ }; do
    budget=$($python -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[2]):.4f}')" "$mbv2_ms" "$fraction")
    run="$out/search-f$fraction-s$seed"
    [[ -f "$run/result.json" ]] && continue
    resume=(); [[ -e "$run/checkpoint" || -e "$run/final.checkpoint" ]] && resume=(--resume)
    [[ -f "$run/infeasible.txt" ]] && continue
    echo "search under $budget ms ($fraction × MobileNetV2), seed $seed" >&2
    # An infeasible budget is a result too: the search's evidence is kept.
    if ! "$edgeloop" search "${recipe[@]}" "${device[@]}" --seed "$seed" --budget-ms "$budget" \
      --warmup-epochs "$warmup" --epochs "$search" --out "$run" "${resume[@]}" >/dev/null 2>"$out/search.err"; then
      grep -q "cannot be met" "$out/search.err" || { cat "$out/search.err" >&2; exit 1; }
      mkdir -p "$run"; tail -n 1 "$out/search.err" > "$run/infeasible.txt"; cat "$run/infeasible.txt" >&2
    fi
  done
done

"$python" - "$out" "$fractions" "$seeds" "$runtime" <<'PY'
import csv, json, os, statistics, sys
out, fractions, seeds, runtime = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4]
def ms(xs, d=2): return f"{statistics.mean(xs):.{d}f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.{d}f}"
print(f"search quality on {runtime} ({len(seeds)} seeds per budget)")
print("| budget | found: accuracy % | baseline: accuracy % (widths) | Δ points | fewer errors | found p50 ms | found/budget | met |")
print("|---|---|---|---|---|---|---|---|")
gains = []
for f in fractions:
    found, base, lat, use, met, widths = [], [], [], [], 0, []
    budget = None
    infeasible = [s for s in seeds if os.path.exists(os.path.join(out, f"search-f{f}-s{s}", "infeasible.txt"))]
    if infeasible:
        why = open(os.path.join(out, f"search-f{f}-s{infeasible[0]}", "infeasible.txt")).read().strip()
        print(f"| {f}× | infeasible ({len(infeasible)}/{len(seeds)} seeds): {why} | | | | | | |")
        continue
    for s in seeds:
        r = json.load(open(os.path.join(out, f"search-f{f}-s{s}", "result.json")))
        budget = r["budget_ms"]
        found.append(100 * r["test_accuracy"]); lat.append(r["measured_latency_ms"])
        use.append(r["measured_latency_ms"] / budget); met += bool(r["budget_met"])
        rows = [row for row in csv.DictReader(open(os.path.join(out, f"baselines-s{s}", "baselines.csv")))
                if float(row["measured_p50_ms"]) <= budget]
        best = max(rows, key=lambda row: float(row["test_accuracy"]), default=None)
        base.append(100 * float(best["test_accuracy"]) if best else float("nan")); widths.append(best["width"] if best else "-")
    gain = statistics.mean(found) - statistics.mean(base)
    errors = 1 - (100 - statistics.mean(found)) / max(100 - statistics.mean(base), 1e-9)
    gains.append(gain)
    print(f"| {budget:.4f} ms ({f}×) | {ms(found)} | {ms(base)} ({','.join(widths)}) | {gain:+.2f} | {100 * errors:.0f}% | "
          f"{ms(lat, 3)} | {ms(use)} | {met}/{len(seeds)} |")
print(f"mean Δ over feasible budgets: {statistics.mean(gains):+.2f} points" if gains else "no feasible budget")
PY
