"""Model adapters: the embedded models, the Hugging Face families, AR scorers and the operator registry."""
