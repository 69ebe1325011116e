"""Sphinx configuration for scgexp."""

import shutil
from importlib.metadata import version as package_version
from pathlib import Path

HERE = Path(__file__).parent

project = "scgexp"
author = "scgexp developers"
copyright = "2026, scgexp developers"
release = package_version("scgexp")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinxcontrib.bibtex",
]
templates_path = ["_templates"]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
bibtex_bibfiles = ["references.bib"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = "off"  # notebooks are stored executed; see notebooks/
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "scgexp"
html_static_path = ["_static"]

# Render the executed notebooks of ../notebooks in the docs.
(HERE / "notebooks").mkdir(exist_ok=True)
for notebook in (HERE.parent / "notebooks").glob("*.ipynb"):
    shutil.copy2(notebook, HERE / "notebooks" / notebook.name)
