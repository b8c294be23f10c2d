#!/usr/bin/env bash
# Fuzzes the agent's model-inspection path (edgeloop_agent::limits::inspect)
# with libFuzzer for a fixed time, on stable Rust: coverage comes from
# LLVM's sancov pass (-Cpasses=sancov-module), not from cargo-fuzz's
# nightly-only sanitizer flags. Needs a C++ compiler (libFuzzer is built
# from source). The corpus lives in fuzz/corpus/inspect and grows with
# what the run finds; crashes land in fuzz/artifacts/inspect.
# Usage: scripts/fuzz-inspect.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
target="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks -Cpanic=abort"
# --target keeps the instrumentation off build scripts and proc macros.
cargo build --release --locked --manifest-path fuzz/Cargo.toml --target "$target" --bin inspect
fuzzer="fuzz/target/$target/release/inspect"
corpus=fuzz/corpus/inspect
mkdir -p fuzz/artifacts/inspect "$corpus"
"$fuzzer" "$corpus" -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048 \
  -artifact_prefix=fuzz/artifacts/inspect/
# Keep only the inputs that add coverage, so the corpus stays small in git.
rm -rf "$corpus.min" && mkdir "$corpus.min"
"$fuzzer" -merge=1 "$corpus.min" "$corpus" 2>&1 | tail -1
rm -rf "$corpus" && mv "$corpus.min" "$corpus"
echo "corpus: $(ls "$corpus" | wc -l) inputs in $corpus; no crash in $seconds s"
