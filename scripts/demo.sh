#!/usr/bin/env bash
# The demo: set up the environment, train every model on embedded data, write a report.
# Extra arguments go to `scgexp demo` (e.g. --out DIR --epochs N).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash scripts/setup-env.sh | tail -n 1)
"$(dirname "$py")/scgexp" demo "$@"
