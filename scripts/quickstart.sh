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
# DATASET (default synthetic) is what everything trains on. Extra arguments
# go to `edgeloop search` (e.g. --strategy reinforce).
#
# AGENT_URL with AGENT_TOKEN_FILE use an agent that is already running (on
# this machine or the target device) instead of starting one; EDGELOOP_BIN
# uses that `edgeloop` binary instead of setting up and building (the test
# suite does both).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }
python=.venv/bin/python

if [[ -n "${EDGELOOP_BIN:-}" ]]; then
  edgeloop=$EDGELOOP_BIN
else
  bash scripts/setup.sh
  log "building (release)"
  cargo build --release --locked -p edgeloop-agent -p edgeloop
  edgeloop=target/release/edgeloop
fi

source scripts/local-agent.sh
out=${QUICKSTART_OUT:-runs/quickstart}
mkdir -p "$out"
if [[ -n "${AGENT_URL:-}" ]]; then
  url=$AGENT_URL
  token_file=${AGENT_TOKEN_FILE:?AGENT_URL needs AGENT_TOKEN_FILE, the file holding that agent token}
else
  log "starting edgeloop-agent on 127.0.0.1 (random port, token in $out/token, log in $out/agent.log)"
  start_local_agent "$(dirname "$edgeloop")" "$out"
  url=$agent_url token_file=$agent_token_file
fi
device=(--device "$url" --token-file "$token_file")
"$edgeloop" devices "${device[@]}"

scale=${EPOCHS_SCALE:-1}
epochs() { $python -c "import sys; print(max(1, round($1 * float(sys.argv[1]))))" "$scale"; }
recipe=(--space tiny --dataset "${DATASET:-synthetic}" --final-epochs "$(epochs 30)")

# The budget: a fraction of what the space's MobileNetV2 (every block
# 3x3 MBConv6, none skipped, width 1.0) measures on this agent.
"$edgeloop" export --space tiny --baseline mbv2 --out "$out/mbv2.onnx" >/dev/null
mbv2_ms=$(steady_p50 "$edgeloop" "$python" "$out/mbv2.onnx" "${device[@]}")
budget=${BUDGET_MS:-$($python -c "import sys; print(f'{float(sys.argv[1]) * float(sys.argv[2]):.4f}')" "$mbv2_ms" "${BUDGET_FRACTION:-0.8}")}
log "MobileNetV2 (tiny, width 1.0) measures $mbv2_ms ms p50 here (the lowest of 3): the budget is $budget ms (${BUDGET_FRACTION:-0.8} × that unless BUDGET_MS was given)"

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
log "results: $run (result.json, model.onnx, search.csv, archs.csv), $baselines, $report/report.md (pareto.png, latency.png)"
