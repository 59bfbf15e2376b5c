#!/usr/bin/env bash
# Behaviour check for refactors: trains the demo, a 2-epoch full fine-tuning run and a progressive run with caches
# (bench/configs/parity_*.yaml, seed 0) from the source tree SRC, and prints each run's results.json scores as one
# JSON line per config. Run it before and after a change and compare the lines: the same seed must give the same
# scores.
#   bench/parity.sh [SRC] [OUT]     SRC: a checkout's src/ (default: this one's), OUT: where the runs go
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="$(cd "${1:-$here/src}" && pwd)"
out="${2:-$(mktemp -d)}"
python="${PYTHON:-$here/.venv/bin/python}"
mkdir -p "$out"
for config in "$here/configs/demo.yaml" "$here/bench/configs/parity_full.yaml" "$here/bench/configs/parity_progressive.yaml"; do
  name="$(basename "$config" .yaml)"
  THAWING_CACHE="$out/cache-$name" HF_HUB_OFFLINE=1 PYTHONPATH="$src" \
    "$python" -m thawing.cli train "$config" --run-dir "$out/$name" >"$out/$name.log" 2>&1
  "$python" -c "import json, sys; r = json.load(open(sys.argv[1])); print(json.dumps({'config': sys.argv[2], 'score': r['score'], 'tasks': r['tasks']}))" \
    "$out/$name/results.json" "$name"
done
