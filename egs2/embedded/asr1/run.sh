#!/usr/bin/env bash
# The embedded corpus (synthesised offline, no download) with CPU-sized LR-SMS: what `make demo` runs.
set -euo pipefail
exec ../../../run.sh --corpus embedded "$@"
