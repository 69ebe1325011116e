#!/usr/bin/env bash
# Build the documentation (warnings are errors) into docs/_build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash scripts/setup-env.sh test,docs | tail -n 1)
"$py" -m sphinx -W --keep-going -b html docs docs/_build/html
