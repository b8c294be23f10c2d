#!/usr/bin/env bash
# Agent overhead: p50 through the agent's HTTP API vs the runtime used
# directly, same models and threads: a tight in-process tract loop for tract,
# onnxruntime's Python API (scripts/bench_ort.py, .venv) for ort. Prints ratios
# (goal: 0.98–1.02) for each isolation mode, the worker's costs (cold start,
# per-request wall time, process vs thread), then tract vs ort as the agent
# measures them.
# Usage: scripts/bench-agent.sh [--threads 1,2] [--duration-ms 3000] [--rounds 3]
#        [--isolation process,thread] [--quick-requests 200] [--python PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p edgeloop-agent -p edgeloop-e2e --bin edgeloop-agent --bin bench-agent
exec target/release/bench-agent --agent-bin target/release/edgeloop-agent "$@"
