"""After training: generation, evaluation against the base model, and merging the adapter into the base."""
