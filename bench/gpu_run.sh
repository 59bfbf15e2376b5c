#!/usr/bin/env bash
# Issue #6's GPU measurement in one go, from the source tree, on a machine without registry access.
# Carry .gpu-wheels/ (pydantic wheels for that Python) and .gpu-data/ (slices of ../shared/datasets) along;
# docs/benchmarks.md says how to rebuild both. Extra arguments go to bench/gpu_throughput.py.
set -euo pipefail
python -c "import pydantic, seqeval" 2>/dev/null || python -m pip install -q --no-index --find-links .gpu-wheels pydantic seqeval
export PYTHONPATH=src THAWING_DATASETS=.gpu-data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out="${OUT:-bench/results}"
python - <<'PY'
import torch
from thawing.model import packing
print("gpu:", torch.cuda.get_device_name(0), "torch", torch.__version__)
print("flash varlen:", packing.varlen_kernel_problem(torch.device("cuda")) or "ok", packing.VARLEN_ARGS)
PY
python bench/gpu_throughput.py --datasets ag_news,sst2 --modes full,encode "$@" --output "$out/gpu_throughput.json"
