"""The embedded models: story grammar, corpus, tokenizer, transformer, training and checker."""

from pathlib import Path

# Where the committed weights, vocabulary and model card live (the one definition of this path).
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
