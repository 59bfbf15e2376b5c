#!/usr/bin/env bash
# Issue #14's GPU checks in two calls on one warm machine, from the source tree, on a machine without registry
# access (carry .gpu-wheels/ and .gpu-data/, see docs/benchmarks.md):
#   bash bench/gpu_session.sh tests    the GPU tests (test_gpu: bf16/varlen/compile defaults, fp16 loss scaling;
#                                      test_packing; test_memory), then the stages part of bench/gpu_stages.py
#   bash bench/gpu_session.sh e2e      the end-to-end part (progressive against full) and the out-of-memory part
# Logs and JSON go to $OUT (bench/results without it).
set -uo pipefail
python -c "import pydantic, seqeval" 2>/dev/null || python -m pip install -q --no-index --find-links .gpu-wheels pydantic seqeval
export PYTHONPATH=src THAWING_DATASETS=.gpu-data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
case "${1:-tests}" in
tests)
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_packing.py tests/test_memory.py \
        >"$out/gpu_tests.log" 2>&1
    echo "tests rc=$?"; tail -n 15 "$out/gpu_tests.log"
    timeout 300 python bench/gpu_stages.py --e2e "" --oom-tokens 0 --epochs 2 --output "$out/gpu_stages.json" \
        >"$out/gpu_stages.log" 2>&1
    echo "stages rc=$?"; grep -E '^\[|Error|error' "$out/gpu_stages.log" | tail -n 20
    ;;
e2e)
    timeout 300 python bench/gpu_stages.py --stages "" --e2e progressive,full --e2e-epochs 1 --oom-tokens 131072 \
        --output "$out/gpu_e2e.json" >"$out/gpu_e2e.log" 2>&1
    echo "e2e rc=$?"; grep -E '^\[|Error|error|out of GPU memory' "$out/gpu_e2e.log" | tail -n 20
    ;;
esac
