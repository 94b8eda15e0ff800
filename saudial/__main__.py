"""`python -m saudial ...` is the same program as `python entrypoint.py ...`."""

from saudial.cli.main import run

run()
