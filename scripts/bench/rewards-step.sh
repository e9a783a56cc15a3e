#!/usr/bin/env bash
# One training step on the SD 1.5 shapes with each of issue 22's rewards added, ours against the PyTorch reference
# in the same invocation (`textcraftor bench train` runs both), each configuration in its own process.
#
#   TEXTCRAFTOR_PYTHON=/path/to/venv/bin/python scripts/bench/rewards-step.sh MODELS [LOGS]
#
# MODELS is a folder for the random-weight models (`textcraftor synth-model`, written there once: sd15, aes, ir,
# a25, hps; about 8 GB in float16). Each configuration's output goes to LOGS/NAME.txt (default: a new temporary
# folder, printed). The settings are BENCHMARKS.md's real-shape rows: 256x256, 5 DDIM steps, K = 2, batch 1, fp32 on
# both sides, best of --repeats 1 after a warm-up step. Set MIXED=bf16 to run ours in bf16 against the authors' fp32.
# Run it on an idle machine: nothing else should compute or allocate beside it.
set -euo pipefail
models=${1:?usage: rewards-step.sh MODELS [LOGS]}
logs=${2:-$(mktemp -d)}
bin=${TEXTCRAFTOR:-.build/release/textcraftor}
python=${TEXTCRAFTOR_PYTHON:?set TEXTCRAFTOR_PYTHON to a Python with torch, diffusers, transformers, open_clip, image-reward and aesthetic-predictor-v2-5}
mkdir -p "$models" "$logs"
for pair in sd15:sd15 aes:aesthetic ir:imagereward a25:aesthetic25 hps:hpsv2; do
  [[ -d $models/${pair%%:*} ]] || "$bin" synth-model --preset "${pair#*:}" --out "$models/${pair%%:*}"
done
base=(--model "$models/sd15" --clip "$models/aes/clip" --aesthetic "$models/aes/aesthetic.safetensors"
  --size 256 --steps 5 --window 2 --batch 1 --repeats 1 --python "$python")
[[ -n ${MIXED:-} ]] && base+=(--mixed-precision "$MIXED" --reference-precision fp32)
ir=(--imagereward "$models/ir/ImageReward.safetensors")
a25=(--aesthetic25 "$models/a25/siglip,$models/a25/aesthetic_predictor_v2_5.safetensors")
hps=(--hpsv2.1 "$models/hps/HPS_v2.safetensors")
run() {  # NAME FLAGS...
  local name=$1
  shift
  echo "== $name" >&2
  "$bin" bench train "${base[@]}" "$@" | tee "$logs/$name.txt"
}
run baseline
run imagereward "${ir[@]}"
run aesthetic25 "${a25[@]}"
run hpsv2.1 "${hps[@]}"
run all-three "${ir[@]}" "${a25[@]}" "${hps[@]}"
echo "logs in $logs" >&2
