#!/usr/bin/env bash
# Set up a Python environment for scgexp; prints the path of its python on the last line.
#
# Uses the active virtualenv/conda environment if there is one (not conda's base), else
# creates ./.venv.
# Installs the CPU build of torch 2.13.0 only when the environment has no torch at all, so an
# existing (e.g. CUDA) torch >= 2.4 is kept; an older one stops the script (pip would replace
# it). Where no CPU build can be had (e.g. only PyPI reachable, on Python >= 3.12), it stops and
# says what to do; SCGEXP_TORCH_FROM_PYPI=1 takes PyPI's build instead. Then installs scgexp
# (editable) with the extras given as the first argument (e.g. "test" or "test,docs").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-}" != "base" ]; then
  py="$CONDA_PREFIX/bin/python"  # an activated conda env (never conda's base)
else
  if [ ! -x .venv/bin/python ]; then
    base=$(command -v python3.11 || command -v python3)
    "$base" -c 'import sys; assert sys.version_info >= (3, 11), "scgexp needs Python >= 3.11"'
    "$base" -m venv .venv >&2
  fi
  py="$PWD/.venv/bin/python"
fi
if [ ! -x "$py" ]; then
  echo "No python at $py: activate a working environment or deactivate this one." >&2
  exit 1
fi
"$py" -c 'import sys; assert sys.version_info >= (3, 11), f"scgexp needs Python >= 3.11, {sys.executable} is {sys.version.split()[0]}"'
"$py" -m pip --version >/dev/null 2>&1 || "$py" -m ensurepip --upgrade >&2
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@" >&2; }

# Installed, not importable: a torch that fails to import is the user's to mend, never replaced.
torch_version=$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
if [ -z "$torch_version" ]; then
  echo "No torch found: installing the CPU build of torch 2.13.0" >&2
  # The CPU wheel from the indexes/wheelhouses pip is configured with; else PyTorch's CPU index.
  index="${SCGEXP_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  if ! pip_install "torch==2.13.0+cpu" 2>/dev/null \
    && ! pip_install "torch==2.13.0" --index-url "$index"; then
    if [ -z "${SCGEXP_TORCH_FROM_PYPI:-}" ]; then
      echo "Could not install the CPU build of torch 2.13.0 for this Python: pip's indexes do" \
        "not have it and $index could not be reached (or has no build for it). Rerun with" \
        "SCGEXP_TORCH_FROM_PYPI=1 to take PyPI's torch (on Linux a CUDA build of several GB)," \
        "set SCGEXP_TORCH_INDEX to a reachable copy of PyTorch's CPU index, or install" \
        "torch >= 2.4 into this environment yourself first." >&2
      exit 1
    fi
    echo "SCGEXP_TORCH_FROM_PYPI is set: installing PyPI's torch instead" >&2
    pip_install "torch>=2.4"
  fi
elif ! "$py" -c 'import sys; v = sys.argv[1].split("+")[0].split("."); sys.exit((int(v[0]), int(v[1])) < (2, 4))' "$torch_version"; then
  echo "torch $torch_version is older than the 2.4 scgexp needs, and pip would replace it with" \
    "PyPI's CUDA build. Upgrade it for your CUDA version first, or use another environment." >&2
  exit 1
fi
if [ -n "$extras" ]; then
  pip_install -e ".[$extras]"
else
  pip_install -e .
fi
echo "$py"
