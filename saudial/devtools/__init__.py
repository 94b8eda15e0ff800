"""For tests, the demo and the benchmark: a tiny LFM2 built locally and synthetic SauDial-shaped data."""
