#!/usr/bin/env bash
# Training-free proxies against trained accuracy: N archs of `tiny` drawn
# uniformly (`edgeloop proxy`), each also trained from scratch with a short
# fixed recipe (`edgeloop train`, measured on the local agent). Prints per
# proxy — and for the size baselines every proxy must beat, parameters and
# MACs — Spearman ρ and Kendall τ against the test accuracy, with bootstrap
# 95% intervals, and how long each proxy took per arch. Signs are fixed in
# advance: higher score, predicted more accurate.
#
# Usage: scripts/bench-proxies.sh [--samples 30] [--seed 0] [--dataset synthetic:1500,1000]
#        [--final-epochs 5] [--out DIR]
# Finished trainings in --out are kept: rerunning continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
samples=30 seed=0 dataset=synthetic:1500,1000 final_epochs=5 out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --samples) samples=$2; shift 2 ;; --seed) seed=$2; shift 2 ;; --dataset) dataset=$2; shift 2 ;;
    --final-epochs) final_epochs=$2; shift 2 ;; --out) out=$2; shift 2 ;;
    *) echo "unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
out=${out:-runs/bench-proxies}
source scripts/local-agent.sh
bench_agent "$out"
mkdir -p "$out/archs"

"$edgeloop" proxy --space tiny --samples "$samples" --seed "$seed" --dataset "$dataset" --json > "$out/proxies.json"
"$python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for a in json.load(open(f"{out}/proxies.json")):
    json.dump({"space": "tiny", "width": 1.0, "ops": a["ops"]}, open(f"{out}/archs/{a['arch_hash']}.json", "w"))
PY
n=0
for arch in "$out"/archs/*.json; do
  n=$((n + 1))
  run="$out/train-$(basename "$arch" .json)"
  [[ -f "$run/result.json" ]] && continue
  resume=(); [[ -e "$run/final.checkpoint" ]] && resume=(--resume)
  echo "training arch $n/$samples" >&2
  "$edgeloop" train --space tiny --arch "$arch" --dataset "$dataset" --final-epochs "$final_epochs" --seed "$seed" \
    --device "$agent_url" --token-file "$agent_token_file" --out "$run" "${resume[@]}" >/dev/null
done

"$python" - "$out" <<'PY'
import json, random, statistics, sys
out = sys.argv[1]
archs = json.load(open(f"{out}/proxies.json"))
acc = [json.load(open(f"{out}/train-{a['arch_hash']}/result.json"))["test_accuracy"] for a in archs]

def ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r

def pearson(a, b):
    ma, mb = statistics.mean(a), statistics.mean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5
    return num / den if den else float("nan")

def spearman(a, b):
    return pearson(ranks(a), ranks(b))

def kendall(a, b):
    s = n = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            d = (a[i] - a[j]) * (b[i] - b[j])
            s += (d > 0) - (d < 0)
            n += 1
    return s / n

def interval(f, a, b, rounds=1000):
    rng = random.Random(0)
    vals = []
    for _ in range(rounds):
        idx = [rng.randrange(len(a)) for _ in a]
        v = f([a[i] for i in idx], [b[i] for i in idx])
        if v == v:
            vals.append(v)
    vals.sort()
    return vals[int(0.025 * len(vals))], vals[int(0.975 * len(vals)) - 1]

neg_inf = float("-inf")
columns = {"params": [a["params"] for a in archs], "MACs": [a["macs"] for a in archs]}
for proxy in archs[0]["scores"]:
    columns[proxy] = [neg_inf if a["scores"][proxy] is None else a["scores"][proxy] for a in archs]
print(f"proxies vs test accuracy of {len(archs)} tiny archs (accuracy {min(acc):.3f}–{max(acc):.3f})")
print("| score | Spearman ρ [95% CI] | Kendall τ [95% CI] | ms per arch |")
print("|---|---|---|---|")
for name, xs in columns.items():
    rho, tau = spearman(xs, acc), kendall(xs, acc)
    (rl, rh), (tl, th) = interval(spearman, xs, acc), interval(kendall, xs, acc)
    ms = statistics.mean(a["milliseconds"][name] for a in archs) if name in archs[0]["milliseconds"] else 0.0
    kind = "" if name in archs[0]["scores"] else " (size baseline)"
    print(f"| {name}{kind} | {rho:+.3f} [{rl:+.2f}, {rh:+.2f}] | {tau:+.3f} [{tl:+.2f}, {th:+.2f}] | {ms:.1f} |")
PY
