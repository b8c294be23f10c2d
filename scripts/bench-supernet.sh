#!/usr/bin/env bash
# Supernet training step, tch (edgeloop) vs the same network in PyTorch
# Python, same device: step time ratio (goal ≤ 1.05), and peak memory of the
# binarized supernet step vs a standalone subnet (goal ≤ 1.3×), and of
# UNAS's relaxed-mixture arch step (every op of every block, tch only).
# Each side and mode runs in its own process, alternating, median of --rounds.
#
# Usage: scripts/bench-supernet.sh [--space tiny] [--width 1.0] [--batch 64]
#        [--steps 50] [--device cpu|cuda] [--threads N] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
space=tiny width=1.0 batch=64 steps=50 device=cpu threads="" rounds=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --space) space=$2; shift 2 ;; --width) width=$2; shift 2 ;; --batch) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;; --device) device=$2; shift 2 ;; --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-.venv/bin/python}
bench=${BENCH_SUPERNET:-target/release/bench-supernet}
if [[ -z "${BENCH_SUPERNET:-}" ]]; then
  bash scripts/setup.sh >/dev/null
  cargo build --release --locked -q -p edgeloop-e2e --bin bench-supernet
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$bench" --space "$space" --width "$width" --layout > "$tmp/layout.json"
common=(--batch "$batch" --steps "$steps")
[[ -n "$threads" ]] && common+=(--threads "$threads")
for ((r = 0; r < rounds; r++)); do
  for mode in supernet standalone; do
    "$bench" --space "$space" --width "$width" --device-kind "$device" --mode "$mode" "${common[@]}" >> "$tmp/runs.jsonl"
    "$python" scripts/bench_supernet.py "$tmp/layout.json" --device "$device" --mode "$mode" "${common[@]}" >> "$tmp/runs.jsonl"
  done
  "$bench" --space "$space" --width "$width" --device-kind "$device" --mode mixture "${common[@]}" >> "$tmp/runs.jsonl"
done
"$python" - "$tmp/runs.jsonl" "$space" "$width" "$batch" "$device" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(side, mode, key):
    v = [r[key] for r in runs if r["side"] == side and r["mode"] == mode and r.get(key) is not None]
    return statistics.median(v) if v else None
print(f"space {sys.argv[2]} width {sys.argv[3]} batch {sys.argv[4]} device {sys.argv[5]} ({runs[0]['device']})")
print(f"{'':24}{'tch ms':>10}{'pytorch ms':>12}{'ratio':>8}")
for mode in ("supernet", "standalone"):
    t, p = med("tch", mode, "step_ms"), med("pytorch", mode, "step_ms")
    print(f"{mode + ' step':24}{t:10.3f}{p:12.3f}{t / p:8.3f}")
for side in ("tch", "pytorch"):
    grow = lambda mode: med(side, mode, "rss_peak_kb") - med(side, mode, "rss_before_kb")
    s, a = grow("supernet"), grow("standalone")
    print(f"{side} peak RSS growth over the steps: supernet {s / 1024:.1f} MiB, standalone {a / 1024:.1f} MiB, ratio {s / max(a, 1):.2f}")
mix, path = med("tch", "mixture", "step_ms"), med("tch", "supernet", "step_ms")
grow = med("tch", "mixture", "rss_peak_kb") - med("tch", "mixture", "rss_before_kb")
path_grow = med("tch", "supernet", "rss_peak_kb") - med("tch", "supernet", "rss_before_kb")
print(f"UNAS mixture arch step (tch): {mix:.3f} ms ({mix / path:.2f}× a path step), "
      f"peak RSS growth {grow / 1024:.1f} MiB ({grow / max(path_grow, 1):.2f}× a path step)")
cs, ca = med("pytorch", "supernet", "cuda_peak_step_bytes"), med("pytorch", "standalone", "cuda_peak_step_bytes")
if cs:
    print(f"pytorch CUDA peak step memory: supernet {cs / 2**20:.1f} MiB, standalone {ca / 2**20:.1f} MiB, ratio {cs / ca:.2f}")
PY
