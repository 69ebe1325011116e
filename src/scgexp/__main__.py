"""``python -m scgexp``: the ``scgexp`` command line."""

from scgexp.cli import main

if __name__ == "__main__":
    main(prog_name="scgexp")
