#!/usr/bin/env bash
# How much the static edgeloop-agent weighs over tract alone (issue 8: at
# most 1.5 MB over a bare tract-onnx program):
#
#   bash scripts/size-agent.sh [aarch64|x86_64] [--force]
#
# Builds, with the `dist` profile (fat LTO, one codegen unit, stripped) for
# <arch>-unknown-linux-musl:
#   (a) build-support/size-baseline: loads an ONNX model with tract-onnx (no
#       default features) and runs it once, single-threaded;
#   (b) the same with tract-linalg's `multithread-mm` and an
#       Executor::multithread, which the agent needs for threads > 1: the fair
#       baseline;
#   (c) the agent, through scripts/build-agent.sh (same toolchain setup),
# and prints their sizes and the agent's overhead over each baseline.
# A baseline whose binary is newer than its sources and Cargo.lock is not
# rebuilt (--force rebuilds it); cargo itself skips an up-to-date agent.
# Each fat-LTO build takes minutes: they run one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[size-agent]\033[0m %s\n' "$*" >&2; }
die() { echo "size-agent: $*" >&2; exit 1; }

usage="usage: scripts/size-agent.sh [aarch64|x86_64] [--force]"
arch=aarch64
force=0
while (( $# )); do
  case "$1" in
    aarch64 | x86_64) arch=$1 ;;
    --force) force=1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) die "unknown argument '$1'; $usage" ;;
  esac
  shift
done

# Allowed overhead of the agent over the multi-threaded baseline, in bytes.
goal=1500000
triple=$arch-unknown-linux-musl
root=$PWD
target_dir=${CARGO_TARGET_DIR:-$root/target}
out_dir=$target_dir/size-agent
mkdir -p "$out_dir"

# (c) first: build-agent.sh installs the Rust target and the C toolchain the
# baselines need as well, and builds the agent exactly as it ships.
log "agent (scripts/build-agent.sh $arch)"
bash scripts/build-agent.sh "$arch" >&2
agent=dist/edgeloop-agent-$arch-linux-musl

# shellcheck source=scripts/cross-toolchain.sh
source scripts/cross-toolchain.sh
cross_cargo_env "$triple"

baseline=build-support/size-baseline
# The agent's lock file, so the baselines link the same versions of every
# crate (cargo prunes the copy to what the baseline uses).
cp Cargo.lock "$baseline/Cargo.lock"

# build_baseline NAME [CARGO FLAGS]: builds the baseline into $out_dir/NAME
# unless that is newer than every source it is built from.
build_baseline() {
  local name=$1 out=$out_dir/$1-$arch-linux-musl
  shift
  if (( ! force )) && [[ -f "$out" ]] &&
    [[ -z "$(find "$baseline/Cargo.toml" "$baseline/src" Cargo.lock -newer "$out" -print -quit)" ]]; then
    log "$name: up to date ($out)"
    return
  fi
  log "$name: building $triple (profile dist${*:+, $*})"
  local start=$SECONDS
  env "${cross_env[@]}" CARGO_TARGET_DIR="$target_dir" cargo build --manifest-path "$baseline/Cargo.toml" --target "$triple" --profile dist "$@" >&2
  cp "$target_dir/$triple/dist/size-baseline" "$out"
  log "$name: built in $((SECONDS - start)) s"
}
build_baseline size-baseline-st
build_baseline size-baseline-mt --features multithread
st=$out_dir/size-baseline-st-$arch-linux-musl
mt=$out_dir/size-baseline-mt-$arch-linux-musl

mb() { awk -v s="$1" 'BEGIN { printf "%.2f MB", s / 1e6 }'; }
signed_mb() { awk -v s="$1" 'BEGIN { printf "%+.2f MB", s / 1e6 }'; }
size_st=$(stat -c %s "$st")
size_mt=$(stat -c %s "$mt")
size_agent=$(stat -c %s "$agent")
over_st=$((size_agent - size_st))
over_mt=$((size_agent - size_mt))

printf '\n%s, profile dist (fat LTO, 1 CGU, stripped)\n' "$triple"
printf '%-46s %12s %10s %16s\n' binary bytes size "agent overhead"
printf '%-46s %12s %10s %16s\n' "(a) tract-onnx, single-threaded" "$size_st" "$(mb "$size_st")" "$(signed_mb "$over_st")"
printf '%-46s %12s %10s %16s\n' "(b) tract-onnx + multithread-mm" "$size_mt" "$(mb "$size_mt")" "$(signed_mb "$over_mt")"
printf '%-46s %12s %10s\n' "(c) edgeloop-agent" "$size_agent" "$(mb "$size_agent")"
printf '    multithread-mm alone: %s\n\n' "$(signed_mb $((size_mt - size_st)))"

verdict() {
  if (( $1 <= goal )); then echo "within"; else echo "over by $(mb $(($1 - goal)))"; fi
}
echo "goal: agent <= baseline + $(mb "$goal")"
echo "  over (b), the fair baseline: $(signed_mb "$over_mt"): $(verdict "$over_mt")"
echo "  over (a), tract without threads: $(signed_mb "$over_st"): $(verdict "$over_st")"
