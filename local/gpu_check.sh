#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU"): on a CUDA machine (3 min 13 s on an H200), layer/encoder/decoder
# checks on CUDA (fp32 equivalence, bf16 within tolerance), `bench` of dense vs LR-SMS (and with low-rank
# subsampling) at the LibriSpeech-100 shape in fp32 and bf16 with ranks rounded to 8 and 64, and one
# epoch of the tiny corpus with --ngpu 1 and use_amp; one Markdown report naming the device.
# Without CUDA it runs the checks on the CPU and says that CUDA is absent.
#
#   local/gpu_check.sh [REPORT.md]          (default: gpu_check.md)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-${root}/.venv/bin/python}
[ -x "${python}" ] || python=python3
cd "${root}" && exec "${python}" dev/gpu_check.py --recipe_dir egs2/embedded/asr1 --out "${1:-gpu_check.md}"
