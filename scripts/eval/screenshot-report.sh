#!/usr/bin/env bash
# Renders an eval's (or the demo's) report.html in headless Chromium and saves a screenshot, to check that the
# self-contained page draws: tables, bar charts, image grid. Usage: scripts/eval/screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]
# Needs chromium (Debian: apt-get install chromium).
set -euo pipefail
report=${1:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]}
size=${3:-1200x2400}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no chromium found (apt-get install chromium)" >&2; exit 1; }
[ -f "$report" ] || { echo "error: $report: no such file" >&2; exit 1; }
# --allow-file-access-from-files is not needed: the page reads nothing beside itself.
"$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size="${size/x/,}" \
  --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" 2>/dev/null
[ -s "$out" ] || { echo "error: chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $out"
