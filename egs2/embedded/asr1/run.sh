#!/usr/bin/env bash
# The embedded corpus (synthesised offline, no download) with CPU-sized LR-SMS: what `make demo` runs.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../../../run.sh" --corpus embedded "$@"
