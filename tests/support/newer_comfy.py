"""Stand-ins for newer ComfyUI code (Comfy-Org/ComfyUI ~0.38.1) that DreamShot meets, for tests on the
pinned 0.3.64.

The newer sources can be read but not run here, so each stand-in reproduces the logic of the newer
function it names (file and commit cited), trimmed only where noted: what needs CUDA, comfy-kitchen or
comfy-aimdo (kernels, VBAR, pinned host buffers) is replaced by the smallest thing that behaves alike
on a CPU. Tests import these; nothing here changes ComfyUI unless a test installs it (monkeypatch).
"""

from __future__ import annotations

import collections
import functools

import torch


# -- comfy/ldm/modules/attention.py @05080f60 -------------------------------------------------------
class AttentionTensorContainer:
    """Single-owner q/k/v handed to a backend."""

    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor

    def take(self):
        if self.tensor is None:
            raise RuntimeError("attention tensor container has already been consumed")
        tensor, self.tensor = self.tensor, None
        return tensor


def newer_wrap_attn(func):
    """wrap_attn: ``preferred_attention`` popped first; with an override set, containers go to its
    container_function when it has one, else are unwrapped (take) and the override is called as
    override(func, q, k, v, **kwargs); the checkpoint's preferred attention is used only when no
    override is set."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        preferred_attention = kwargs.pop("preferred_attention", None)
        containers = args[:3] if isinstance(args[0], AttentionTensorContainer) else None
        remove_key = False
        try:
            if "_inside_attn_wrapper" not in kwargs:
                transformer_options = kwargs.get("transformer_options", None)
                remove_key = True
                kwargs["_inside_attn_wrapper"] = True
                if transformer_options is not None and "optimized_attention_override" in transformer_options:
                    override = transformer_options["optimized_attention_override"]
                    if containers is not None:
                        if hasattr(override, "container_function"):
                            return override.container_function(*args, **kwargs)
                        args = tuple(c.take() for c in containers) + args[3:]
                    return override(func, *args, **kwargs)
                if preferred_attention is not None and preferred_attention.function is not None:
                    return preferred_attention.function(*args, **kwargs)
            if containers is not None:
                args = tuple(c.take() for c in containers) + args[3:]
            return func(*args, **kwargs)
        finally:
            if remove_key:
                del kwargs["_inside_attn_wrapper"]
    return wrapper


# -- comfy/model_patcher.py @08d0e510 ----------------------------------------------------------------
def set_model_optimized_attention(model_options, optimized_attention):
    """ModelPatcher.set_model_optimized_attention (what the Model Attention Backend node does,
    comfy_extras/nodes_model_advanced.py @691e8278), on a model_options dict."""
    def optimized_attention_override(_, *args, **kwargs):
        return optimized_attention(*args, **kwargs)

    if getattr(optimized_attention, "container_function", None) is not None:
        optimized_attention_override.container_function = optimized_attention.container_function
    model_options["transformer_options"]["optimized_attention_override"] = optimized_attention_override


def install_newer_prepare_state(monkeypatch) -> None:
    """ModelPatcher.prepare_state(timestep, model_options): ON_PREPARE_STATE callbacks get the sampling
    model_options (comfy/model_patcher.py @08d0e510), passed by _calc_cond_batch at the place where
    0.3.64 calls prepare_state(timestep) (comfy/samplers.py @311c0140). 0.3.64's _calc_cond_batch is
    kept; it hands its model_options to the prepare_state it calls."""
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.samplers

    current = []
    original = comfy.samplers._calc_cond_batch

    def _calc_cond_batch(model, conds, x_in, timestep, model_options):
        current.append(model_options)
        try:
            return original(model, conds, x_in, timestep, model_options)
        finally:
            current.pop()

    def prepare_state(self, timestep, model_options=None):
        model_options = current[-1] if model_options is None else model_options
        for callback in self.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_PREPARE_STATE):
            callback(self, timestep, model_options)

    monkeypatch.setattr(comfy.samplers, "_calc_cond_batch", _calc_cond_batch)
    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "prepare_state", prepare_state)


# -- comfy/model_management.py (archive_model_dtypes), called by BaseModel.__init__ (model_base.py) ---
def archive_model_dtypes(model):
    for _, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            setattr(module, f"{param_name}_comfy_model_dtype", param.dtype)
        for buf_name, buf in module.named_buffers(recurse=False):
            setattr(module, f"{buf_name}_comfy_model_dtype", buf.dtype)


def dynamic_patcher(model, device=None):
    """ModelPatcherDynamic of comfy/model_patcher.py @08d0e510, on ``model``'s BaseModel, as far as
    DreamShot meets it: is_dynamic(); patch_model asserts ``not load_weights``; partially_load (what
    load_models_gpu calls) unpatches without weights, applies the object patches, then load():
    ``_load_list(for_dynamic=True, default_device=device)`` casts every parameter of a non-leaf module
    in place to its archived dtype, and leaf modules without comfy_cast_weights get their parameters
    cast to it (backed up, restored by restore_loaded_backups). The per-op weight streaming of cast
    modules (VBAR, LowVramPatch, pinned buffers) is left out: DreamShot's parameter patches are not on
    those modules. ``device``: the load device (the CPU here; the real class reroutes a CPU load device
    to the static patcher, so this path only runs on a GPU)."""
    import comfy.model_patcher
    import comfy.utils

    class ModelPatcherDynamic(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

        def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
            assert not load_weights
            return super().patch_model(load_weights=load_weights, force_patch_weights=force_patch_weights)

        def _load_list(self, for_dynamic=False, default_device=None):
            loading = []
            for n, m in self.model.named_modules():
                default = False
                params = {name: param for name, param in m.named_parameters(recurse=False)}
                for name, _ in m.named_parameters(recurse=True):
                    if name not in params:
                        default = True   # default random weights in non leaf modules
                        break
                if default and default_device is not None:
                    for param_name, param in params.items():
                        param.data = param.data.to(device=default_device,
                                                   dtype=getattr(m, param_name + "_comfy_model_dtype", None))
                if not default and (hasattr(m, "comfy_cast_weights") or len(params) > 0):
                    loading.append((n, m, params))
            return loading

        def restore_loaded_backups(self):
            for key in list(self.backup.keys()):
                comfy.utils.set_attr_param(self.model, key, self.backup.pop(key).weight)

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False,
                 dirty=False):
            self.restore_loaded_backups()
            for n, m, params in self._load_list(for_dynamic=True, default_device=device_to):
                if hasattr(m, "comfy_cast_weights"):
                    continue   # streamed per op (left out, see above)
                for param in params:
                    key = f"{n}.{param}" if n else param
                    weight = comfy.utils.get_attr(self.model, key)
                    if key not in self.backup:
                        self.backup[key] = collections.namedtuple("Dimension", ["weight", "inplace_update"])(weight,
                                                                                                          False)
                    model_dtype = getattr(m, param + "_comfy_model_dtype", None)
                    comfy.utils.set_attr_param(self.model, key, weight.to(dtype=model_dtype, device=device_to))
            self.model.device = device_to

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            self.unpatch_model(self.offload_device, unpatch_weights=False)
            self.patch_model(load_weights=False)
            self.load(device_to)

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            super().unpatch_model(device_to=None, unpatch_weights=False)
            if unpatch_weights:
                self.restore_loaded_backups()

    return ModelPatcherDynamic(model.model, device or model.load_device, model.offload_device)


# -- comfy_extras/nodes_sparse_attention.py @01dafad3 ------------------------------------------------
HEAD_DIM = 128
SPARSE_MODULE = "comfy_extras.nodes_sparse_attention"


class SparseAttnPatch:
    """Options and runtime state of one patched model (the node's class, without the MiniMax-H3 and
    VSA parts). ``kernel`` stands for ``ck.sol_attn``: it records each call and returns the plain
    attention of its inputs (BTHD), so a call it takes gives the dense result up to the bf16 cast."""

    def __init__(self, sigma_start, sigma_end, min_tokens, dense_blocks=()):
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.min_tokens = min_tokens
        self.dense_blocks = set(dense_blocks)
        self.vsa = False
        self.installed = set()    # the override closures this patch has put on the hook
        self.kernel_calls = []    # (q shape, transformer_options) of every call the kernel took

    def reset(self):
        pass

    def dense_reason(self, transformer_options, tokens, block_index):
        sigmas = transformer_options.get("sigmas")
        if sigmas is not None:
            sigma = float(sigmas[0])
            if sigma > self.sigma_start or sigma < self.sigma_end:
                return f"sigma {sigma:.3g} outside the start/end window"
        if tokens < self.min_tokens:
            return f"{tokens} tokens < min_tokens {self.min_tokens}"
        if self.dense_blocks and block_index is not None and block_index in self.dense_blocks:
            return f"block {block_index} in dense_blocks"
        return None

    def kernel(self, qs, ks, vs, transformer_options):
        self.kernel_calls.append((tuple(qs.shape), transformer_options))
        out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qs, ks, vs)))
        return out.transpose(1, 2)


def _ineligible(q, k, v, dim_head):
    """The node's checks, less ``not on CUDA`` and ``no compiled sol_attn kernel`` (the stand-in kernel
    runs anywhere)."""
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"dtype {q.dtype}"
    if dim_head != HEAD_DIM:
        return f"head_dim {dim_head} != {HEAD_DIM}"
    if q.shape != k.shape or q.shape != v.shape:
        return "cross-attention or GQA (kept dense)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "mixed dtypes"
    return None


def make_attention_override(patch: SparseAttnPatch, previous):
    """The node's override: declined calls run ``previous`` (the override that was on the hook before
    this one, heads passed positionally) or ``func``."""
    def override(func, q, k, v, heads, mask=None, attn_precision=None,
                 skip_reshape=False, skip_output_reshape=False, **kwargs):
        transformer_options = kwargs.get("transformer_options") or {}

        def dense():
            args = (q, k, v, heads)
            kw = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                      skip_output_reshape=skip_output_reshape, **kwargs)
            return func(*args, **kw) if previous is None else previous(func, *args, **kw)

        if mask is not None or patch.vsa:
            return dense()
        tokens = q.shape[2] if skip_reshape else q.shape[1]
        if patch.dense_reason(transformer_options, tokens, transformer_options.get("block_index")) is not None:
            return dense()
        if skip_reshape:
            b, _, _, dim_head = q.shape
            qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
        else:
            b, _, dim_head = q.shape
            dim_head //= heads
            qs, ks, vs = (t.view(b, -1, heads, dim_head) for t in (q, k, v))
        if _ineligible(qs, ks, vs, dim_head) is not None:
            return dense()
        if q.dtype == torch.float32:   # the kernel quantizes to int8 anyway; bf16 keeps the fp32 range
            qs, ks, vs = (t.to(torch.bfloat16) for t in (qs, ks, vs))
        out = patch.kernel(qs, ks, vs, transformer_options).to(q.dtype)
        if skip_output_reshape:
            return out.transpose(1, 2)
        return out.reshape(b, -1, heads * dim_head)

    override.__module__ = SPARSE_MODULE   # defined in that module in ComfyUI
    return override


def install_override(patch: SparseAttnPatch, transformer_options):
    """Put this patch's override on top of whatever attention override is on the hook; idempotent once
    it is on top. Runs at patch time and again from ON_PREPARE_STATE each step."""
    current = transformer_options.get("optimized_attention_override")
    if current in patch.installed:
        return
    override = make_attention_override(patch, current)
    patch.installed.add(override)
    transformer_options["optimized_attention_override"] = override


def apply_block_sparse_attention(model, *, start_percent=0.0, end_percent=1.0, min_tokens=12288, dense_blocks=()):
    """The node's apply_block_sparse_attention for a model that is not MiniMax-H3: a clone with the
    override installed and re-installed on ON_PREPARE_STATE (which needs install_newer_prepare_state on
    0.3.64, whose prepare_state passes no model_options). Returns (clone, patch)."""
    import comfy.patcher_extension

    model_sampling = model.get_model_object("model_sampling")
    patch = SparseAttnPatch(sigma_start=float(model_sampling.percent_to_sigma(start_percent)),
                            sigma_end=float(model_sampling.percent_to_sigma(end_percent)),
                            min_tokens=min_tokens, dense_blocks=dense_blocks)
    m = model.clone()
    install_override(patch, m.model_options["transformer_options"])
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PREPARE_STATE, "block_sparse_attention",
                            lambda model_patcher, timestep, model_options:
                            install_override(patch, model_options["transformer_options"]))
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, "block_sparse_attention",
                            lambda model_patcher: patch.reset())
    return m, patch
