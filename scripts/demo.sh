#!/usr/bin/env bash
# The demo: set up the environment, train every model on embedded data, write a report.
# Extra arguments go to `scgexp demo` (e.g. --out DIR --epochs N); a relative --out is taken
# from the folder the script is run from (default: scgexp_demo there).
set -euo pipefail
py=$(cd "$(dirname "$0")/.." && bash scripts/setup-env.sh | tail -n 1)
"$(dirname "$py")/scgexp" demo "$@"
