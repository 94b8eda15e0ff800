"""Settings: every knob of a run, typed and documented (`settings.py`), and where they come from (`sources.py`)."""
