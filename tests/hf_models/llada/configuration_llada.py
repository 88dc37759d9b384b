"""A tiny stand-in for LLaDA's configuration_llada.py (GSAI-ML/LLaDA-8B-*), same habits."""
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache: bool = False, d_model: int = 8, n_heads: int = 2, n_layers: int = 1,
                 mlp_hidden_size: int = 16, vocab_size: int = 126464, embedding_size: int = 126464,
                 max_sequence_length: int = 64, mask_token_id: int = 126336, weight_tying: bool = False,
                 **kwargs):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.max_sequence_length = max_sequence_length
        self.mask_token_id = mask_token_id
        self.weight_tying = weight_tying
        kwargs.setdefault("architectures", ["LLaDAModelLM"])
        # LLaDA passes use_cache to the base class; transformers 5 drops it there (it is a
        # generation parameter now), so `config.use_cache` ends up unset.
        super().__init__(use_cache=use_cache, **kwargs)
