"""`python -m saudial.config` prints the README's settings table."""

from saudial.config.sources import settings_table

print(settings_table(), end="")
