#!/usr/bin/env bash
# Execute every stored notebook with the current package (the files stay as they are).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash scripts/setup-env.sh test,docs | tail -n 1)
"$py" scripts/notebooks.py notebooks/*.ipynb
