#!/usr/bin/env bash
# Exercise every CUDA path once on one GPU (about 5 minutes on an H200) and write one JSON summary:
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu_check_out)
# It installs the project as the README says, so it runs on a bare machine. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if python -c "import torch" 2>/dev/null; then
        echo "gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False here)" >&2
        exit 2
    fi
fi
python -m pip install -q -e ".[test]"
exec python benchmarks/gpu_check.py --out "${1:-${OUT:-gpu_check_out}}"
