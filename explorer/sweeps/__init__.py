"""Sweeps: a grid of decoding configurations x seeds, every run stored and linked to its cell,
run in-process or as Ray tasks, summarised and reported from the store (`python -m explorer sweep`)."""
