#!/usr/bin/env bash
# Packs what a CUDA benchmark run on the device machine needs into .device/ (ignored by git, to be named in the
# device tool's `carry`): the tool built here with the Swift runtime linked statically, the image libraries it links
# that a bare machine may lack, the wheels the reference scripts need beyond the device's own PyTorch (diffusers,
# open_clip and theirs), and .device/run.sh, which runs the tool there against that machine's own torch 2.11 (CUDA).
#
#   scripts/device/pack.sh                   # here, once per change
#   (device) bash .device/run.sh doctor      # then e.g. bash .device/run.sh bench train --device cuda ...
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/bin .device/lib .device/whl

libdir=$(scripts/bootstrap-libtorch --print-libdir)
export PKG_CONFIG_PATH=$PWD/.build/pkgconfig
swift build -c release --product textcraftor --static-swift-stdlib -Xlinker -rpath -Xlinker "$libdir"
# The working tree travels too (about 32 MB) and the whole call carries at most 64 MiB: the binary goes stripped
# and xz-compressed (87 -> 16 MB), with the resource bundles it reads beside it (the tokenizer's vocabulary,
# Parti-Prompts; not ShapesWorld's, which benchmarks do not use).
strip -o .device/bin/textcraftor .build/release/textcraftor
xz -T0 -6 .device/bin/textcraftor
cp -r .build/release/TextCraftor_StableDiffusion.resources .build/release/TextCraftor_TextCraftor.resources .device/bin/
# The NCCL plugin, built against a CUDA torch of the device's version (PYTHON names its interpreter), beside the
# binary where `train --dist-backend nccl` looks for it.
if ! scripts/build-nccl-plugin .device/bin/libtextcraftor_nccl.so; then
  echo "pack: no NCCL plugin (needs a CUDA torch 2.11 for PYTHON, with NCCL's and CUDA's headers); Gloo only" >&2
fi
for lib in libpng16.so.16 libjpeg.so.62; do
  cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" .device/lib/
done

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .device/whl diffusers==0.39.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13

cat > .device/run.sh <<'RUN'
#!/usr/bin/env bash
# On the device machine: the tool against this machine's torch (its lib/ holds libtorch_cuda.so), the wheels on
# PYTHONPATH for the reference scripts. Usage: bash .device/run.sh ARGS...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=/tmp/textcraftor-bin
if [ ! -x "$bin/textcraftor" ]; then
  mkdir -p "$bin" && xz -dc "$here/bin/textcraftor.xz" > "$bin/textcraftor" && chmod +x "$bin/textcraftor"
  cp -r "$here"/bin/*.resources "$bin/"
  [ -e "$here/bin/libtextcraftor_nccl.so" ] && cp "$here/bin/libtextcraftor_nccl.so" "$bin/"
fi
torchlib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$here"/whl/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} TEXTCRAFTOR_PYTHON=python3 PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$torchlib:$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec "$bin/textcraftor" "$@"
RUN
chmod +x .device/run.sh
du -sh .device | awk '{print "packed .device: " $1 " (the device tool carries at most 64 MiB)"}'
