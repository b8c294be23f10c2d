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
# The aarch64 agents that tests/qemu_agent.rs and tests/deploy.rs run under
# qemu: the static musl one (tract only, as it ships for phones and boards)
# and the glibc one with ONNX Runtime (its library fetched from PyPI). Both
# are built only to be tested, so in the `qemu-test` profile
# (.cargo/config.toml): the same code, target, static linking and kernels
# as the shipped build, everything at opt-level 0 without debug info. The
# shipped `dist` build (fat LTO, one codegen unit) of the musl agent took
# 1,542 s of a 35-minute run, fighting the test build for the 2 cores; in
# `qemu-test` the gnu agent took 176 s of CPU against 876 s in `dist` and
# 940 s in `dev`. The price: their tests run tract's Rust code unoptimised
# under emulation (about 30 s instead of 15), far less than the build
# saves. `scripts/build-agent.sh` (no --profile) still makes the shipped
# binaries, and `scripts/size-agent.sh` measures them.
# Both build beside the test build, one after the other in their own target
# folder (in a shared one, cargo makes each build wait for the other).
arm_log=$(mktemp)
cross_dir="${CARGO_TARGET_DIR:-$PWD/target}/cross"
(
  CARGO_TARGET_DIR=$cross_dir stage aarch64-agent bash scripts/build-agent.sh aarch64 --profile qemu-test
  CARGO_TARGET_DIR=$cross_dir stage aarch64-gnu-agent bash scripts/build-agent.sh aarch64-gnu --profile qemu-test
) >"$arm_log" 2>&1 &
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
export EDGELOOP_AGENT_AARCH64="$PWD/dist/qemu-test/edgeloop-agent-aarch64-linux-musl"
export EDGELOOP_AGENT_AARCH64_GNU="$PWD/dist/qemu-test/edgeloop-agent-aarch64-linux-gnu"
export EDGELOOP_ORT_AARCH64="$PWD/dist/onnxruntime-aarch64/libonnxruntime.so"
stage clippy+test-build cargo test --workspace --locked --no-run "$@"
arm_status=0
wait "$arm_pid" || arm_status=$?
cat "$arm_log" >&2
(( arm_status == 0 )) || { echo "[test.sh] an aarch64 agent failed to build" >&2; exit "$arm_status"; }
export EDGELOOP_REQUIRE_CROSS=1
# The farm's tests run against Debian's nats-server (setup.sh installs it).
export EDGELOOP_REQUIRE_NATS=1
stage tests cargo test --workspace --locked "$@"
