"""transformers 5 bridges for the families' published remote code (written for transformers 4:
LLaDA pins 4.38, Dream 4.46).

Each `bridge_*` function adapts a loaded class, module, config or model only when its problem is
present, and says which version needs it; `apply_class_bridges` runs the class-level ones and
returns the names of those that changed something (an adapter lists them in `bridges`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import sys

import torch

log = logging.getLogger(__name__)


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def bridge_all_tied_weights_keys(model_class: type) -> bool:
    """transformers >= 5.0: `from_pretrained` reads `model.all_tied_weights_keys`, which 5.x sets
    in `post_init()`. Remote code written for 4.x (LLaDA, MDLM) never calls `post_init()`, so
    loading fails with "no attribute 'all_tied_weights_keys'". After `__init__`, set it where it
    is missing, from the class's own `_tied_weights_keys` (nothing to tie for LLaDA or MDLM).
    Returns whether the class was adapted (instances record `_explorer_filled_tied_keys`)."""
    if _transformers_major() < 5 or "_explorer_tied_keys_bridge" in vars(model_class):
        return False
    original = model_class.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not hasattr(self, "all_tied_weights_keys"):
            try:
                keys = self.get_expanded_tied_weights_keys(all_submodels=False)
            except Exception:
                keys = {}
            self.all_tied_weights_keys = keys
            self._explorer_filled_tied_keys = True

    model_class.__init__ = __init__
    model_class._explorer_tied_keys_bridge = True
    return True


def bridge_tie_weights_signature(model_class: type) -> bool:
    """transformers >= 5.0 calls `model.tie_weights(missing_keys=..., recompute_mapping=False)`
    at the end of `from_pretrained`; LLaDA's 4.x-era override is `tie_weights(self)` -> TypeError.
    Wrap such an override so it accepts (and ignores) the new keywords."""
    from transformers import PreTrainedModel

    method = getattr(model_class, "tie_weights", None)
    if method is None or method is PreTrainedModel.tie_weights:
        return False
    params = inspect.signature(method).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) or {"missing_keys", "recompute_mapping"} <= set(params):
        return False

    @functools.wraps(method)
    def tie_weights(self, *args, **kwargs):
        return method(self)

    model_class.tie_weights = tie_weights
    return True


def bridge_use_cache(config) -> bool:
    """transformers >= 5.0 treats `use_cache` as a generation parameter: `PreTrainedConfig`
    drops it from the config's keyword arguments, so `config.use_cache` is unset, and LLaDA's
    forward reads it when no `use_cache` is passed (AttributeError). The explorer never uses a KV
    cache (each step is one full bidirectional pass): set it to False where it is missing."""
    if hasattr(config, "use_cache"):
        return False
    config.use_cache = False
    return True


def _default_rope_parameters(config=None, device=None, seq_len=None, **rope_kwargs):
    """transformers 4.x's `_compute_default_rope_parameters`: plain RoPE inverse frequencies."""
    if rope_kwargs:
        base, dim = rope_kwargs["base"], rope_kwargs["dim"]
    else:
        base = getattr(config, "rope_theta", None)
        if base is None:
            base = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


def bridge_rope_default(module) -> bool:
    """transformers >= 5.0 removed the "default" entry of `ROPE_INIT_FUNCTIONS` (4.x mapped it to
    `_compute_default_rope_parameters`); Dream's rotary embedding looks it up when the config has
    no rope scaling -> KeyError: 'default'. Give the remote module its own copy of the table with
    a "default" entry computing the 4.x frequencies (transformers' table is left untouched)."""
    table = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if not isinstance(table, dict) or "default" in table:
        return False
    module.ROPE_INIT_FUNCTIONS = {**table, "default": _default_rope_parameters}
    return True


def bridge_generation_config_validate(module) -> bool:
    """transformers >= 5.0 calls `GenerationConfig.validate(strict=...)` and
    `validate(user_set_attributes=...)` (from `update`, hence from `from_pretrained`/`from_dict`);
    Dream's `DreamGenerationConfig` overrides it as `validate(self, is_init=False)` -> TypeError
    while Dream's `from_pretrained` reloads its generation config. Wrap such overrides in the
    remote module so keywords they do not take are dropped."""
    from transformers import GenerationConfig

    changed = False
    for obj in list(vars(module).values()):
        if not (isinstance(obj, type) and issubclass(obj, GenerationConfig) and obj is not GenerationConfig):
            continue
        method = vars(obj).get("validate")
        if method is None or getattr(method, "_explorer_bridge", False):
            continue
        params = inspect.signature(method).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        accepted = set(params) - {"self"}

        @functools.wraps(method)
        def validate(self, *args, _method=method, _accepted=accepted, **kwargs):
            return _method(self, *args, **{k: v for k, v in kwargs.items() if k in _accepted})

        validate._explorer_bridge = True
        obj.validate = validate
        changed = True
    return changed


@contextlib.contextmanager
def _parameters_on_meta():
    """Build modules with their parameters on the meta device and their buffers for real: what
    accelerate's `init_empty_weights(include_buffers=False)` did for transformers 4. Patches
    `nn.Module.register_parameter` for the duration (loads run one at a time in a worker)."""
    original = torch.nn.Module.register_parameter

    def register_parameter(module, name, param):
        original(module, name, param)
        if param is not None:
            param = module._parameters[name]
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def bridge_non_persistent_buffers(model, model_class: type) -> list[str]:
    """transformers >= 5.0 builds the model on the meta device, buffers included, then refills
    the non-persistent buffers (which no checkpoint holds) with `torch.empty_like`: uninitialised
    memory, recomputed only for the rotary classes transformers' own `_init_weights` knows.
    Dream's `_init_weights` replaces that one, so its rotary `inv_freq` keeps whatever the
    memory held: silently wrong logits (4.x computed buffers for real: accelerate's
    `init_empty_weights` left buffers off the meta device). Rebuild the class once with its
    parameters on the meta device (cheap) and its buffers computed for real, and copy every
    non-persistent buffer (and tensor attribute still on the meta device, e.g. Dream's
    `original_inv_freq`) that differs. Returns the names of the buffers repaired."""
    if _transformers_major() < 5:
        return []
    targets = [
        (name, buf)
        for name, buf in model.named_buffers()
        if name.rpartition(".")[2] in model.get_submodule(name.rpartition(".")[0])._non_persistent_buffers_set
    ]
    stale_attributes = [
        (module_name, attr)
        for module_name, module in model.named_modules()
        for attr, value in vars(module).items()
        if isinstance(value, torch.Tensor) and value.is_meta
    ]
    if not targets and not stale_attributes:
        return []
    try:
        with _parameters_on_meta(), torch.device("cpu"):
            reference = model_class(copy.deepcopy(model.config))
    except Exception as exc:
        log.warning(
            "could not rebuild %s to check its non-persistent buffers (%s: %s); these may be "
            "uninitialised under transformers 5: %s",
            model_class.__name__,
            type(exc).__name__,
            exc,
            ", ".join(name for name, _ in targets),
        )
        return []
    reference_buffers = dict(reference.named_buffers())
    repaired = []
    for name, buf in targets:
        ref = reference_buffers.get(name)
        if ref is None or ref.is_meta or ref.shape != buf.shape:
            continue
        ref = ref.to(device=buf.device, dtype=buf.dtype)
        if not torch.equal(ref, buf):
            with torch.no_grad():
                buf.copy_(ref)
            repaired.append(name)
    for module_name, attr in stale_attributes:
        ref_owner = reference.get_submodule(module_name)
        value = getattr(ref_owner, attr, None)
        if not isinstance(value, torch.Tensor) or value.is_meta:
            continue
        owner = model.get_submodule(module_name)
        alias = next((b for b, t in ref_owner._buffers.items() if t is value and b in owner._buffers), None)
        setattr(owner, attr, owner._buffers[alias] if alias else value)  # an alias of a buffer stays one
    return repaired


def _remote_modules(model_class: type) -> list:
    """The modules of the checkpoint's own code among the class's bases (not transformers/torch)."""
    names = {
        c.__module__
        for c in model_class.__mro__
        if not c.__module__.startswith(("transformers.", "torch.", "builtins", "typing"))
    }
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


def apply_class_bridges(model_class: type) -> list[str]:
    """Adapt a remote-code model class (and its modules) to the installed transformers; returns
    every class-level bridge this class has needed (also when an earlier load applied them)."""
    applied = list(vars(model_class).get("_explorer_class_bridges", ()))
    if bridge_tie_weights_signature(model_class):
        applied.append("tie_weights(**kwargs)")
    bridge_all_tied_weights_keys(model_class)  # reported per instance, when it fills the attribute
    for module in _remote_modules(model_class):
        if bridge_rope_default(module):
            applied.append("ROPE_INIT_FUNCTIONS['default']")
        if bridge_generation_config_validate(module):
            applied.append("GenerationConfig.validate(**kwargs)")
    model_class._explorer_class_bridges = tuple(applied)
    return applied
