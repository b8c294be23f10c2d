#!/usr/bin/env bash
# The main job, end to end on this machine: set up, build, start a local
# agent on loopback with a random token, and search the `tiny` space on the
# built-in synthetic dataset under a latency budget measured by that agent.
# Results land in runs/quickstart/. BUDGET_MS (default 0.12) sets the budget;
# extra arguments go to `edgeloop search` (e.g. --strategy reinforce).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

log() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }

log "building (release)"
cargo build --release --locked -p edgeloop-agent -p edgeloop

out=runs/quickstart
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
target/release/edgeloop devices --device "$url" --token-file "$token_file"

run="$out/search-$(date -u +%Y%m%dT%H%M%SZ)"
log "searching tiny on synthetic under ${BUDGET_MS:-0.12} ms on $url (run directory $run)"
target/release/edgeloop search --space tiny --dataset synthetic --device "$url" --token-file "$token_file" \
  --budget-ms "${BUDGET_MS:-0.12}" --latency-loss add#linear --loss-lambda 1 --out "$run" "$@"
ln -sfn "$(basename "$run")" "$out/latest"
log "results: $run/result.json, model.onnx, arch.json, search.csv (also $out/latest); agent log in $out/agent.log"
