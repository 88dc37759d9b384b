"""A tiny stand-in for MDLM's configuration_mdlm.py (kuleshov-group/mdlm-owt), same fields."""
import transformers


class MDLMConfig(transformers.PretrainedConfig):
    model_type = "mdlm"

    def __init__(self, vocab_size=258, model_length=64, hidden_dim=16, cond_dim=8, n_blocks=1,
                 n_heads=2, dropout=0.0, time_conditioning=True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.model_length = model_length
        self.hidden_dim = hidden_dim
        self.cond_dim = cond_dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.dropout = dropout
        self.time_conditioning = time_conditioning
