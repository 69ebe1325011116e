"""Execute the stored notebooks, each in a fresh temporary folder; exit 1 if any cell fails.

The notebooks in ``notebooks/`` are stored executed and the docs render them as they are, so
an API change can break one without the docs build noticing. This runs each again with the
current package (the stored files stay untouched) and names the first failing cell.

    python scripts/notebooks.py notebooks/*.ipynb
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(paths: list[str]) -> int:
    """Run each notebook; return the exit status (1 if any failed)."""
    # The kernel is this interpreter's, with its environment's packages.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    failed = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            client = NotebookClient(
                notebook, timeout=1800, resources={"metadata": {"path": folder}}
            )
            try:
                client.execute()
                outcome = "ok"
            except CellExecutionError as error:
                failed.append(path)
                outcome = f"FAILED\n{error}"
        print(f"{path}: {outcome} ({time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        print(f"{len(failed)} of {len(paths)} notebooks failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
