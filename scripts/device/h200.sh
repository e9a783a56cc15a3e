#!/usr/bin/env bash
# Every GPU check of issues 8 and 9 in one call of the device tool, in order of importance, each under its own time
# limit and all inside a deadline, so that a task lent a device (15 minutes of device time, machine start included)
# measures what matters first and brings back whatever it finished:
#
#   scripts/device/pack.sh                                                        # here: packs .device/
#   (device tool) run  command="bash scripts/device/h200.sh"  carry=[".device"]  timeout_s=600
#   DRY=1 scripts/device/h200.sh          # here, after make release: the same sequence on the CPU with the tiny
#                                         # test models (references run where TEXTCRAFTOR_PYTHON has torch)
# What it runs (real shapes from synth-model, 512x512, 25 DDIM steps, K = 5, guidance 7.5, aesthetic + CLIP +
# PickScore + HPSv2):
#   1. bench train, batch 1, ours bf16 against the authors' fp32 (the targets: <= 0.6x time, <= 0.5x memory)
#   2. bench generate, batch 4, float16, against diffusers (the target: >= 1.2x images/s)
#   3. bench train, batch 4, ours bf16 against fp32
#   3b. SDXL base at 1024x1024 (synth-model sdxl): bench train with both encoders trained, batch 1, ours bf16 against
#       the authors' fp32 (the SDXL issue's targets: <= 0.7x time, <= 0.5x memory), then bench generate, batch 1, float16
#   4. train with --dist-backend nccl, one process (issue 9's "the path loads and runs"), then gloo
#   5. bench train, batch 1, fp32 against fp32 and bf16 against bf16 (like for like)
#   6. bench train, batch 4, fp32 against fp32
# Results: $OUT/results.md (every table, with the command above it), $OUT/h200.log (everything), $OUT/gpu.txt.
# DEADLINE (seconds, default 540) bounds the whole; a step that would start with under a minute left is skipped.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
deadline=${DEADLINE:-540}
OUT=${OUT:-/tmp/h200-out}  # the device tool sets OUT; what it holds comes back
mkdir -p "$OUT"
log=$OUT/h200.log results=$OUT/results.md
: > "$log"
echo "# $(date -u +%F): scripts/device/h200.sh$([ -n "${DRY:-}" ] && echo ' (DRY: CPU, tiny models)')" > "$results"

if [ -n "${DRY:-}" ]; then
  tc=(.build/release/textcraftor)
  device=cpu
  sd=Tests/StableDiffusionTests/Fixtures/sd/tiny-sd15 sdxl=Tests/StableDiffusionTests/Fixtures/sdxl/tiny-sdxl clip=Tests/RewardsTests/Fixtures/hf/clip
  head=Tests/RewardsTests/Fixtures/hf/aesthetic.pth
  extra=(--pickscore Tests/RewardsTests/Fixtures/hf/pickscore)  # the tiny open_clip fixture has no 49408-token vocabulary
  shape=(--size 64 --steps 5 --window 2 --repeats 1) gen=(--size 64 --steps 5 --repeats 1 --dtype float32) backends=(gloo)
  xl_size=64
  train_shape=(--resolution 64 --sampling-steps 4 --grad-window 2)
else
  tc=(bash .device/run.sh)
  device=cuda models=/tmp/m
  sd=$models/sd15 sdxl=$models/sdxl clip=$models/aes/clip head=$models/aes/aesthetic.safetensors
  extra=(--pickscore "$models/pick" --hpsv2 "$models/hps/HPS_v2.safetensors")
  shape=(--size 512 --steps 25 --window 5 --repeats 2) gen=(--size 512 --steps 25 --repeats 2 --dtype float16)
  backends=(nccl gloo)
  xl_size=1024
  train_shape=(--resolution 512 --sampling-steps 25 --grad-window 5)
fi

left() { echo $((deadline - (SECONDS - start))); }
# step TITLE COMMAND...: runs it under the time left, its output to the log and, for tables, to results.md.
step() {
  local title=$1; shift
  local budget; budget=$(left)
  if [ "$budget" -lt 60 ]; then echo "skipped (under a minute left): $title" | tee -a "$log" "$results"; return; fi
  printf '\n## %s\n```\n$ %s\n' "$title" "$*" >> "$results"
  echo "== [$((SECONDS - start)) s] $title: $*" >> "$log"
  local t0=$SECONDS
  timeout --kill-after=10 "$budget" "$@" 2>> "$log" | tee -a "$log" >> "$results"
  local rc=${PIPESTATUS[0]}
  printf '```\n(exit %s, %s s)\n' "$rc" $((SECONDS - t0)) >> "$results"
  echo "== [$((SECONDS - start)) s] done, exit $rc" >> "$log"
}

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' 2>&1; } > "$OUT/gpu.txt"
step "doctor" "${tc[@]}" doctor

if [ -z "${DRY:-}" ]; then
  # The real shapes with random weights (float16 storage), written in parallel; the NCCL plugin, where pack.sh could
  # not build it, compiled here against this machine's CUDA torch at the same time.
  mkdir -p "$models"
  "${tc[@]}" --help > /dev/null 2>&1  # run.sh unpacks the binary and the wheels once, before the parallel calls
  echo "== [$((SECONDS - start)) s] synth-model sd15, aesthetic, pickscore, hpsv2, sdxl" >> "$log"
  pending=()
  for p in "sd15 sd15" "aesthetic aes" "pickscore pick" "hpsv2 hps" "sdxl sdxl"; do
    set -- $p; "${tc[@]}" synth-model --preset "$1" --out "$models/$2" >> "$log" 2>&1 & pending+=("$!:synth-model $1")
  done
  if [ ! -e /tmp/textcraftor-bin/libtextcraftor_nccl.so ]; then
    PYTHON=python3 scripts/build-nccl-plugin /tmp/textcraftor-bin/libtextcraftor_nccl.so >> "$log" 2>&1 &
    pending+=("$!:build-nccl-plugin")
  fi
  for job in "${pending[@]}"; do wait "${job%%:*}" || echo "failed: ${job#*:} (see h200.log)" | tee -a "$results"; done
  echo "== [$((SECONDS - start)) s] models and plugin ready" >> "$log"
fi

rewards=(--model "$sd" --clip "$clip" --aesthetic "$head" "${extra[@]}" --device "$device")
step "training step, batch 1: ours bf16, reference fp32 (the authors')" \
  "${tc[@]}" bench train "${rewards[@]}" "${shape[@]}" --batch 1 --mixed-precision bf16 --reference-precision fp32
step "sampling, batch 4, float16: ours against diffusers" \
  "${tc[@]}" bench generate --model "$sd" "${gen[@]}" --batch 4 --device "$device"
step "training step, batch 4: ours bf16, reference fp32" \
  "${tc[@]}" bench train "${rewards[@]}" "${shape[@]}" --batch 4 --mixed-precision bf16 --reference-precision fp32
# SDXL: the same settings at its own size (the shape and sampling arrays with --size swapped).
xl_shape=("${shape[@]}") xl_gen=("${gen[@]}")
xl_shape[1]=$xl_size xl_gen[1]=$xl_size
step "SDXL ${xl_size}x${xl_size} training step, both encoders, batch 1: ours bf16, reference fp32 (the authors')" \
  "${tc[@]}" bench train --model "$sdxl" --clip "$clip" --aesthetic "$head" "${extra[@]}" --device "$device" \
  "${xl_shape[@]}" --train text-encoders --batch 1 --mixed-precision bf16 --reference-precision fp32
step "SDXL ${xl_size}x${xl_size} sampling, batch 1: ours against diffusers" \
  "${tc[@]}" bench generate --model "$sdxl" "${xl_gen[@]}" --batch 1 --device "$device"

printf 'a red circle on a blue background\na bowl of fruit, photo\nan old car in the rain\na tall tree at night\n' > /tmp/h200-prompts.txt
for backend in "${backends[@]}"; do
  rm -rf "/tmp/dp-$backend"
  step "data-parallel path, one process, --dist-backend $backend" \
    "${tc[@]}" train --model "$sd" --prompts /tmp/h200-prompts.txt --reward "aesthetic=$clip,$head" "${train_shape[@]}" \
    --batch-size 2 --max-steps 4 --save-every 100000 --device "$device" --dist-backend "$backend" --out "/tmp/dp-$backend"
  [ -f "/tmp/dp-$backend/metrics.jsonl" ] && python3 -c 'import json, sys
print("step_time (s):", [round(json.loads(l)["step_time"], 3) for l in open(sys.argv[1])])' "/tmp/dp-$backend/metrics.jsonl" >> "$results"
done

step "training step, batch 1: ours fp32, reference fp32" \
  "${tc[@]}" bench train "${rewards[@]}" "${shape[@]}" --batch 1 --mixed-precision no
step "training step, batch 1: ours bf16, reference bf16" \
  "${tc[@]}" bench train "${rewards[@]}" "${shape[@]}" --batch 1 --mixed-precision bf16
step "training step, batch 4: ours fp32, reference fp32" \
  "${tc[@]}" bench train "${rewards[@]}" "${shape[@]}" --batch 4 --mixed-precision no
echo "== [$((SECONDS - start)) s] finished" >> "$log"
echo "h200.sh: $((SECONDS - start)) s; tables in $results"
