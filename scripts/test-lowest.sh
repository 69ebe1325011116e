#!/usr/bin/env bash
# The tests at the lowest versions pyproject.toml allows for its direct dependencies, in
# .venv-lowest (torch stays at 2.13.0). Run it after changing a lower bound or using a newer API
# of a dependency. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
env=.venv-lowest
[ -x "$env/bin/python" ] || python3.11 -m venv "$env"
pip_install() { "$env/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install "torch==2.13.0" uv  # scripts/setup-env.sh explains which build of torch this takes
"$env/bin/uv" pip compile pyproject.toml --extra test --resolution lowest-direct \
  --python-version 3.11 --no-emit-package torch --no-header --quiet -o "$env/lowest.txt"
# torch's own dependencies (CUDA libraries) come with the torch installed above, if any.
grep -vE '^(nvidia-|triton==)' "$env/lowest.txt" > "$env/lowest-no-cuda.txt"
pip_install -r "$env/lowest-no-cuda.txt"
pip_install --no-deps -e .
"$env/bin/ruff" check .
"$env/bin/python" -m pytest "$@"
