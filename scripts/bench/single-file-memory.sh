#!/usr/bin/env bash
# Peak memory of opening a model from one single file against opening it from its diffusers folder, side by side.
#
#   scripts/bench/single-file-memory.sh FOLDER [RUNS]
#
# FOLDER is a diffusers folder (e.g. `textcraftor synth-model --preset sdxl --dtype float16 --out /tmp/synth-sdxl`);
# it is written once as FOLDER.safetensors (`textcraftor convert`), then each is opened by the same command, a
# one-step 64x64 generation in the weights' stored type (what every command does first: load every component), RUNS
# times each (default 3), alternating, under /usr/bin/time. Prints each run's peak resident memory, the medians and
# their ratio (file / folder). Run it on an idle machine: nothing else should allocate beside it.
set -euo pipefail
folder=${1:?usage: single-file-memory.sh FOLDER [RUNS]}
runs=${2:-3}
bin=${TEXTCRAFTOR:-.build/release/textcraftor}
file="${folder%/}.safetensors"
[[ -f $file ]] || "$bin" convert "$folder" --out "$file"
dtype=$(python3 -c "import json,sys; h=open(sys.argv[1],'rb'); import struct; n=struct.unpack('<Q',h.read(8))[0]; d=json.loads(h.read(n)); print({'F16':'float16','BF16':'bfloat16'}.get(next(v['dtype'] for k,v in d.items() if k!='__metadata__'),'float32'))" "$file")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
peak() {  # peak RSS in GB of: textcraftor generate --model "$@"
  /usr/bin/time -f "%M" -o "$out/rss" "$bin" generate --model "$@" --prompt "a red circle" --steps 1 --height 64 --width 64 \
    --dtype "$dtype" --seed 1 --out "$out/images" >/dev/null 2>"$out/err" || { cat "$out/err" >&2; exit 1; }
  rm -rf "$out/images"
  awk '{printf "%.2f", $1 / 1048576}' "$out/rss"
}
declare -a a b
for ((i = 0; i < runs; i++)); do
  a+=("$(peak "$folder")")
  b+=("$(peak "$file")")
  echo "run $((i + 1)): folder ${a[-1]} GB, single file ${b[-1]} GB"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
echo "median peak RSS ($dtype, $runs runs each): folder $ma GB, single file $mb GB, ratio $(awk -v x="$mb" -v y="$ma" 'BEGIN {printf "%.3f", x / y}')x"
