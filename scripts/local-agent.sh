# Sourced by scripts that need an agent on this machine (quickstart, the
# search-quality benchmark): `start_local_agent BIN_DIR OUT_DIR` starts
# BIN_DIR/edgeloop-agent on a random loopback port with a fresh random token
# in OUT_DIR/token, logs to OUT_DIR/agent.log, stops it when the calling
# script exits, and sets `agent_url` and `agent_token_file`.
start_local_agent() {
  local bin_dir=$1 out=$2
  agent_token_file="$out/token"
  ( umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$agent_token_file" )
  rm -f "$out/agent.addr"
  "$bin_dir/edgeloop-agent" serve --listen 127.0.0.1:0 --addr-file "$out/agent.addr" \
    --token-file "$agent_token_file" --cache-dir "$out/agent-cache" 2>"$out/agent.log" &
  local pid=$!
  # shellcheck disable=SC2064 # the pid is meant to be expanded now
  trap "kill $pid 2>/dev/null || true" EXIT
  for _ in $(seq 100); do [[ -s "$out/agent.addr" ]] && break; sleep 0.1; done
  [[ -s "$out/agent.addr" ]] || { echo "the agent did not start; see $out/agent.log" >&2; return 1; }
  agent_url="http://$(cat "$out/agent.addr")"
}

# `steady_p50 EDGELOOP PYTHON MODEL ARGS…`: the lowest p50 (ms) of three
# measurements of MODEL through `edgeloop measure ARGS…`. A shared or
# virtual machine has slow stretches of seconds (seen here: 0.36 ms for a
# network that measures 0.20 ms); a budget derived from one of them would
# be far looser than the device.
steady_p50() {
  local edgeloop=$1 python=$2 model=$3; shift 3
  for _ in 1 2 3; do
    "$edgeloop" measure "$@" "$model" --json
  done | "$python" -c '
import json, sys
text, decoder, p50s = sys.stdin.read().strip(), json.JSONDecoder(), []
while text:
    measurement, end = decoder.raw_decode(text)
    p50s.append(measurement["latency_ms"]["p50"])
    text = text[end:].strip()
print(min(p50s))'
}

# `bench_agent OUT`: what the benchmarks share: release binaries (built,
# unless EDGELOOP_BIN names the edgeloop binary, with the agent beside it),
# OUT created and a local agent started there. Sets `python`, `edgeloop`,
# `agent_url` and `agent_token_file`.
bench_agent() {
  local out=$1
  python=.venv/bin/python
  if [[ -z "${EDGELOOP_BIN:-}" ]]; then
    bash scripts/setup.sh >/dev/null
    cargo build --release --locked -q -p edgeloop-agent -p edgeloop
  fi
  edgeloop=${EDGELOOP_BIN:-target/release/edgeloop}
  mkdir -p "$out"
  start_local_agent "$(dirname "$edgeloop")" "$out"
}
