#!/usr/bin/env bash
# Training step of the cpu preset before and after, interleaved on one machine.
#
# Unpacks each older commit (git archive) into a temporary folder and runs the current
# benchmarks/train_profile.py against its code (PYTHONPATH) and against the working tree. The
# versions take turns: ROUNDS rounds, each running every version for STEPS timed steps, so a
# machine whose speed drifts over minutes slows all of them alike. Then one profiled run of the
# last two versions. 2 threads, then 1 thread. Then the last two versions again, late in
# training: LATE_WARMUP untimed steps before the timed ones (0: skip), LATE_ROUNDS rounds, 2
# threads. THREADS lists the thread counts of the interleaved rounds (default "2 1"). Run it on
# an idle machine.
# On 1 thread the current code computes the step in one batch, as f5e44dc does.
# Output: benchmarks/results/train_profile_before_after.txt (or $OUT), with the summary table
# first; the per-step times are in the .jsonl beside it.
#
#   bash benchmarks/train_before_after.sh            # ~10 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/train_profile_before_after.txt}
jsonl=${out%.txt}.jsonl
steps=${STEPS:-10}
rounds=${ROUNDS:-3}
# label|commit ("" = the working tree)|extra train_profile arguments
late_warmup=${LATE_WARMUP:-100}
late_rounds=${LATE_ROUNDS:-2}
versions=(
  "0.1.0 (98b4e5f), its cpu preset: 512 cells per view|98b4e5f|"
  "f5e44dc: 2 parts side by side, glibc's heap defaults|f5e44dc|"
  "current code and cpu preset (leaner Sinkhorn loop, retained heap)|| "
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in "${versions[@]}"; do
  IFS='|' read -r _ commit _ <<< "$v"
  if [[ -n "$commit" && ! -d "$tmp/$commit" ]]; then
    mkdir -p "$tmp/$commit"
    git archive "$commit" src | tar -x -C "$tmp/$commit"
  fi
done
run() {  # version line, threads, profile steps, untimed steps first (default 2)
  IFS='|' read -r label commit extra <<< "$1"
  local path="" warmup=${4:-2}
  [[ -n "$commit" ]] && path="$tmp/$commit/src"
  [[ "$warmup" != 2 ]] && label="$label, after $warmup steps"
  echo "### $label, $2 thread(s)"
  # shellcheck disable=SC2086
  PYTHONPATH="$path" python benchmarks/train_profile.py --threads "$2" --steps "$steps" \
    --warmup "$warmup" --pretrain-steps 0 --profile-steps "$3" --json "$jsonl" \
    --label "$label" $extra 2>&1 | grep -v '^USDT'
}
rm -f "$jsonl"
log=$tmp/log.txt
for threads in ${THREADS:-2 1}; do
  for round in $(seq "$rounds"); do
    for v in "${versions[@]}"; do run "$v" "$threads" 0 >> "$log"; done
  done
done
for v in "${versions[@]:1:2}"; do run "$v" 2 5 >> "$log"; done
if (( late_warmup > 0 )); then
  for round in $(seq "$late_rounds"); do
    for v in "${versions[@]:1:2}"; do run "$v" 2 0 "$late_warmup" >> "$log"; done
  done
fi
{
  echo "# interleaved: $rounds rounds x $steps timed steps per version and thread count"
  python - "$jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| version | threads | steps | step min (s) | step median (s) | per-round medians (s) "
      "| Sinkhorn iterations per step |")
print("|---|---:|---:|---:|---:|---|---:|")
seen = []
for r in rows:
    if (r["label"], r["threads"]) not in seen:
        seen.append((r["label"], r["threads"]))
for label, threads in seen:
    runs = [r for r in rows if r["label"] == label and r["threads"] == threads and not r["shares"]]
    times = [t for r in runs for t in r["step_s"]]
    per_round = ", ".join(f"{statistics.median(r['step_s']):.3f}" for r in runs)
    iters = statistics.mean(r["ot_iters_mean"] for r in runs)
    print(f"| {label} | {threads} | {len(times)} | {min(times):.3f} | "
          f"{statistics.median(times):.3f} | {per_round} | {iters:.0f} |")
PY
  echo
  cat "$log"
} > "$out"
echo "wrote $out"
