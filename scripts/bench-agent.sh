#!/usr/bin/env bash
# Agent overhead: p50 through the agent's HTTP API vs a tight in-process
# tract loop, same models and threads. Prints ratios (goal: 0.97–1.03).
# Usage: scripts/bench-agent.sh [--threads 1,2] [--duration-ms 3000] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p edgeloop-agent -p edgeloop-e2e --bin edgeloop-agent --bin bench-agent
exec target/release/bench-agent --agent-bin target/release/edgeloop-agent "$@"
