#!/usr/bin/env bash
# The main job, end to end on this machine: build, start a local agent on
# loopback with a random token, and measure two sample MBConv networks on it
# through the HTTP API. Results land in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

log() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }

log "building (release)"
cargo build --release --locked -p edgeloop-agent -p edgeloop
cargo run --release --locked -q -p edgeloop-onnx --example write_samples -- models >/dev/null

out=runs/quickstart
mkdir -p "$out"
token_file="$out/token"
( umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$token_file" )

log "starting edgeloop-agent on 127.0.0.1 (random port, token in $token_file)"
target/release/edgeloop-agent serve --listen 127.0.0.1:0 --addr-file "$out/agent.addr" \
  --token-file "$token_file" --cache-dir "$out/agent-cache" 2>"$out/agent.log" &
agent_pid=$!
trap 'kill $agent_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$out/agent.addr" ]] && break; sleep 0.1; done
[[ -s "$out/agent.addr" ]] || { echo "agent did not start; see $out/agent.log" >&2; exit 1; }
url="http://$(cat "$out/agent.addr")"

target/release/edgeloop devices --device "$url" --token-file "$token_file"
for model in sample-small sample-large; do
  log "measuring models/$model.onnx"
  target/release/edgeloop measure --device "$url" --token-file "$token_file" "models/$model.onnx" \
    --json > "$out/$model.measurement.json"
  target/release/edgeloop measure --device "$url" --token-file "$token_file" "models/$model.onnx" \
    --runs 20 --min-duration-ms 500
done
log "measurements written to $out/*.measurement.json; agent log in $out/agent.log"
