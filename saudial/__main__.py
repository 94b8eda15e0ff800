"""`python -m saudial ...` is the same program as `python entrypoint.py ...`."""

import sys

from saudial.cli.main import main

sys.exit(main())
