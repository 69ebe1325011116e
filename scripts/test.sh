#!/usr/bin/env bash
# The tests: set up the environment (with test extras), lint, run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash scripts/setup-env.sh test | tail -n 1)
"$py" -m ruff check .
"$py" -m pytest "$@"
