#!/usr/bin/env bash
# The main job, end to end on this machine: set up, build, start a local
# agent on loopback with a random token, measure the space's MobileNetV2
# baseline on it, set the latency budget from that measurement (so it is
# feasible on any machine), search the `tiny` space on the built-in
# synthetic dataset under that budget, train the baseline width that fits
# the same budget, and compare the two side by side, with a report.
#
# Results land in runs/quickstart/. BUDGET_MS sets the budget instead of
# BUDGET_FRACTION (default 0.8) × the baseline's measured p50. EPOCHS_SCALE
# (default 1) scales every epoch count (the test suite runs it small).
# Extra arguments go to `edgeloop search` (e.g. --strategy reinforce).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

log() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }
python=.venv/bin/python

log "building (release)"
cargo build --release --locked -p edgeloop-agent -p edgeloop
edgeloop=target/release/edgeloop

out=${QUICKSTART_OUT:-runs/quickstart}
mkdir -p "$out"
token_file="$out/token"
( umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$token_file" )

log "starting edgeloop-agent on 127.0.0.1 (random port, token in $token_file)"
rm -f "$out/agent.addr"
target/release/edgeloop-agent serve --listen 127.0.0.1:0 --addr-file "$out/agent.addr" \
  --token-file "$token_file" --cache-dir "$out/agent-cache" 2>"$out/agent.log" &
agent_pid=$!
trap 'kill $agent_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$out/agent.addr" ]] && break; sleep 0.1; done
[[ -s "$out/agent.addr" ]] || { echo "agent did not start; see $out/agent.log" >&2; exit 1; }
url="http://$(cat "$out/agent.addr")"
device=(--device "$url" --token-file "$token_file")
"$edgeloop" devices "${device[@]}"

scale=${EPOCHS_SCALE:-1}
epochs() { $python -c "import sys; print(max(1, round($1 * float(sys.argv[1]))))" "$scale"; }
recipe=(--space tiny --dataset "${DATASET:-synthetic}" --final-epochs "$(epochs 30)")

# The budget: a fraction of what the space's MobileNetV2 (every block
# 3x3 MBConv6, none skipped, width 1.0) measures on this agent.
"$edgeloop" export --space tiny --baseline mbv2 --out "$out/mbv2.onnx" >/dev/null
mbv2_ms=$("$edgeloop" measure "${device[@]}" "$out/mbv2.onnx" --json | $python -c 'import json, sys; print(json.load(sys.stdin)["latency_ms"]["p50"])')
budget=${BUDGET_MS:-$($python -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[2]):.4f}')" "$mbv2_ms" "${BUDGET_FRACTION:-0.8}")}
log "MobileNetV2 (tiny, width 1.0) measures $mbv2_ms ms p50 here: the budget is $budget ms (${BUDGET_FRACTION:-0.8} × that unless BUDGET_MS was given)"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
run="$out/search-$stamp"
log "searching tiny under $budget ms on $url (run directory $run)"
"$edgeloop" search "${recipe[@]}" "${device[@]}" --budget-ms "$budget" \
  --warmup-epochs "$(epochs 20)" --epochs "$(epochs 30)" --out "$run" "$@"
ln -sfn "$(basename "$run")" "$out/latest"

baselines="$out/baselines-$stamp"
log "training the widest MobileNetV2 width that fits $budget ms (same recipe, same device)"
"$edgeloop" baseline "${recipe[@]}" "${device[@]}" --widths 0.35,0.5,0.75,1.0 --fit-ms "$budget" --out "$baselines"

report="$out/report-$stamp"
log "found vs baseline"
"$edgeloop" report "$run" --baselines "$baselines" --out "$report"
log "results: $run (result.json, model.onnx, search.csv, archs.csv), $baselines, $report/report.md (pareto.png, latency.png); agent log in $out/agent.log"
