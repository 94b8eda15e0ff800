"""Data: reading files, the SauDial workbook, the split, the prompt, and the examples the trainer sees."""
