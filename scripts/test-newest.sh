#!/usr/bin/env bash
# The tests with the newest releases pip installs for another Python, e.g.
#   SCGEXP_PYTHON=python3.13 bash scripts/test-newest.sh
# (default python3.12), in .venv-<python>. Python >= 3.12 gets newer anndata, mudata, pandas and
# scvi-tools than CI's 3.11. torch is installed as scripts/setup-env.sh does, or else from PyPI
# (install a torch into the environment first to use another build). Extra arguments go to
# pytest. Exits with 75 when the environment cannot be set up (e.g. no network).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${SCGEXP_PYTHON:-python3.12}
env=.venv-$(basename "$python")
install() {
  [ -x "$env/bin/python" ] || "$python" -m venv "$env" || return
  # No CPU build of torch 2.13.0 exists for Python >= 3.12 where only PyPI is reachable: PyPI's.
  VIRTUAL_ENV="$PWD/$env" SCGEXP_TORCH_FROM_PYPI=1 bash scripts/setup-env.sh test > /dev/null \
    || return
  # The newest releases the bounds allow, also of packages an earlier run installed; torch kept.
  local torch
  torch=$("$env/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))') \
    || return
  "$env/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    --upgrade-strategy eager -e ".[test]" --constraint <(echo "torch==$torch")
}
if ! install; then
  echo "Could not set up $env (see pip's messages above): no tests ran." >&2
  exit 75  # told apart from failed tests (.ci/run)
fi
"$env/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(anndata|mudata|pandas|numpy|scanpy|scvi-tools|torch) ' || true
"$env/bin/ruff" check .
"$env/bin/python" -m pytest "$@"
