#!/usr/bin/env python3
"""The container's entry point and the local one: parse settings, run, map errors to exit codes.

Settings come from SAUDIAL_* environment variables and the matching --flags (see --help).
"""

from saudial.cli.main import run

if __name__ == "__main__":
    run()
