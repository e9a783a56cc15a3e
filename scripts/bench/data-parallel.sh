#!/usr/bin/env bash
# Data-parallel step time on the tiny SD1.5 pipeline (CPU, Gloo over loopback): the same run of global batch
# BATCH with 1 process and with N processes (--nproc-per-node), printed side by side with their ratio.
# Usage: scripts/bench/data-parallel.sh [N=2] [STEPS=12] [BATCH=4]   (after `make release`)
# Each rank gets OMP_NUM_THREADS = cores / N (as torchrun); the single process gets every core. The first 2 steps
# are warm-up and left out of the mean.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2}; steps=${2:-12}; batch=${3:-4}
bin=.build/release/textcraftor
[ -x "$bin" ] || { echo "error: $bin missing: run make release" >&2; exit 1; }
rewards=Tests/RewardsTests/Fixtures/hf
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
printf 'a red circle\na blue square\na green cat\na small dog\nan old car\na tall tree\na bowl of fruit\na city at night\n' > "$work/prompts.txt"
run() {  # $1: output folder, rest: extra flags
  local out=$1; shift
  "$bin" train --model Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15 --prompts "$work/prompts.txt" \
    --reward "aesthetic=$rewards/clip,$rewards/aesthetic.pth" --sampling-steps 4 --grad-window 2 --batch-size "$batch" \
    --max-steps "$steps" --save-every 100000 --out "$out" "$@" > /dev/null 2>&1
  python3 -c "import json,sys; t=[json.loads(l)['step_time'] for l in open('$out/metrics.jsonl')][2:]; print(sum(t)/len(t))"
}
one=$(run "$work/one")
many=$(run "$work/many" --nproc-per-node "$n")
python3 - "$one" "$many" "$n" "$batch" <<'PY'
import sys
one, many, n, batch = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"tiny SD1.5, global batch {batch}, 4 DDIM steps (2 with gradient), {__import__('os').cpu_count()} cores")
print(f"{'processes':>10} {'s/step':>9} {'prompts/s':>10}")
print(f"{1:>10} {one:>9.4f} {batch/one:>10.2f}")
print(f"{n:>10} {many:>9.4f} {batch/many:>10.2f}")
print(f"speed-up with {n} processes: {one/many:.2f}x")
PY
