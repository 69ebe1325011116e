"""``python -m scgexp``: the ``scgexp`` command line."""

from scgexp.cli import main

main(prog_name="scgexp")
