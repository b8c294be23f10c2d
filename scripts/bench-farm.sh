#!/usr/bin/env bash
# Farm overhead: small models measured through a device farm (nats-server,
# an in-process worker, in-process agents) against calling the agent
# directly, both through the host's measurement service: the ratio of time
# per model (goal ≤ 1.1). Then throughput with 1, 2, 4 agents through the
# farm and through a direct pool, each against linear (goal ≥ 0.9; agents
# sharing this machine's cores cannot scale past them).
# Usage: scripts/bench-farm.sh [--models 60] [--runs 20] [--agents 1,2,4]
#        [--per-agent 8] [--duration-ms 300] [--nats-server PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || [[ " $* " == *" --nats-server "* ]] ||
  { echo "bench-farm: nats-server not found (apt-get install nats-server)" >&2; exit 1; }
cargo build --release -p edgeloop-e2e --bin bench-farm
exec target/release/bench-farm "$@"
