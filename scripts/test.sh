#!/usr/bin/env bash
# Sets up (idempotently) and runs the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage says how long it took, so a slow suite shows where the time goes.
stage() {
    local name=$1 start=$SECONDS
    shift
    "$@"
    echo "[test.sh] $name: $((SECONDS - start)) s" >&2
}
stage setup bash scripts/setup.sh
# Style and lints first: they fail fast, before the long builds.
stage fmt cargo fmt --all --check
# The shipped static aarch64 agent, which tests/qemu_agent.rs and
# tests/deploy.rs run under qemu: the suite then covers the ARM binary as it
# ships (fat LTO linking tract's kernels included), not only the host build.
# (Built in the `release` profile instead, it saved about 2 minutes of a
# 31-minute run: not worth testing another binary than the one shipped.)
# It builds beside the test build, in its own target folder (in a shared
# one, cargo makes each build wait for the other).
arm_log=$(mktemp)
(CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/cross" stage aarch64-agent bash scripts/build-agent.sh aarch64) \
  >"$arm_log" 2>&1 &
arm_pid=$!
trap 'kill "$arm_pid" 2>/dev/null || true; rm -f "$arm_log"' EXIT
# Clippy runs as the workspace's compiler wrapper in the test build itself,
# as `cargo clippy` runs it in a check build: every workspace target (lib,
# bins, tests, examples; there are no benches) is linted while it compiles,
# and the dependencies are compiled once instead of also checked apart
# (a separate `cargo clippy` took 260 s alone). The tests stage keeps the same
# environment, so it builds nothing again.
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER="$(dirname "$(rustup which cargo)")/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings"
# tests/deploy.rs runs the agent binary that `cargo test --workspace` builds
# anyway (for the agent's own tests). Left to itself it runs `cargo build -p
# edgeloop-agent`, whose features unify differently, and rebuilds for minutes.
profile=debug
for arg in "$@"; do [[ $arg == --release ]] && profile=release; done
export EDGELOOP_AGENT_BIN="${EDGELOOP_AGENT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/$profile/edgeloop-agent}"
export EDGELOOP_AGENT_AARCH64="$PWD/dist/edgeloop-agent-aarch64-linux-musl"
stage clippy+test-build cargo test --workspace --locked --no-run "$@"
arm_status=0
wait "$arm_pid" || arm_status=$?
cat "$arm_log" >&2
(( arm_status == 0 )) || { echo "[test.sh] the aarch64 agent failed to build" >&2; exit "$arm_status"; }
export EDGELOOP_REQUIRE_CROSS=1
stage tests cargo test --workspace --locked "$@"
