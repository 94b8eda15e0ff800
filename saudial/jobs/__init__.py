"""Each command from start to end: train (with evaluation and upload after it), evaluate, translate."""
