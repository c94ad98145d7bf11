#!/usr/bin/env bash
# The user flow of issue 29 on scikit-learn's digits (64 px, 1258 training / 539 held-out images, the fixed split of
# tools/precision_costs.make_digits), through the command line, each step from the file the step before wrote:
#   train MODEL (the short-run rule, default epochs) -> train best.safetensors --qat (the file's resolution)
#   -> eval int8.xml and int8.onnx on the held-out images.
# Usage: bash tools/qat_flow.sh OUT_DIR MODEL...   (one JSON line per step on stdout; record:
#   benchmarks/accuracy/qat_flow.jsonl, with the CPU added)
set -euo pipefail
out=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
litevit=${LITEVIT:-litevit}
mkdir -p "$out"
[ -d "$out/digits" ] || $py -c "import sys; sys.path.insert(0, '$here'); from pathlib import Path; \
from precision_costs import make_digits; make_digits(Path('$out/digits'))"
for model in "$@"; do
  run="$out/$model"
  rm -rf "$run"
  start=$(date +%s)
  $litevit train "$model" --data "$out/digits" --img-size 64 --out "$run/float" --no-progress >"$run.train.log" 2>&1
  float=$($litevit eval "$run/float/best.safetensors" --data "$out/digits/val" --json --no-progress)
  echo "{\"model\": \"$model\", \"step\": \"train (default rule, 64 px)\", \"eval\": $float, \"s\": $(( $(date +%s) - start ))}"
  start=$(date +%s)
  code=0
  $litevit train "$run/float/best.safetensors" --data "$out/digits" --qat --out "$run/qat" --no-progress \
    >"$run.qat.log" 2>&1 || code=$?
  line=$(grep -- "--qat: float top-1" "$run.qat.log" | tail -1 | sed 's/"/\\"/g')
  echo "{\"model\": \"$model\", \"step\": \"train FILE --qat\", \"exit\": $code, \"line\": \"$line\", \"s\": $(( $(date +%s) - start ))}"
  for f in int8.xml int8.onnx; do
    if [ -f "$run/qat/$f" ]; then
      echo "{\"model\": \"$model\", \"step\": \"eval qat/$f\", \"eval\": $($litevit eval "$run/qat/$f" --data "$out/digits/val" --json --no-progress)}"
    fi
  done
done
