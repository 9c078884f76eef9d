"""Every place where the ComfyUI versions DreamShot runs on differ, in one module.

Oldest tested: 0.3.64 (a125cd84), run for real by the test suite. Newest read: the Comfy-Org/ComfyUI
sources around 0.38.1 (files at the commits named below), which cannot be run here; each shim is
unit-tested against a stand-in of the newer object (tests/test_comfy_compat.py). docs/compatibility.md
is the user-facing summary.

Every shim is a no-op where the pinned version has nothing to adapt, so 0.3.64 behaves bit for bit as
before. ComfyUI is imported lazily: the module itself imports anywhere (the pack's __init__.py uses it
to decide whether it can register at all).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
from types import SimpleNamespace

log = logging.getLogger("DreamShot")


# -- the node API ---------------------------------------------------------------------------------
# The pack is written against the numbered V3 API comfy_api.v0_0_2 (a re-export of comfy_api.latest in
# 0.3.64). Should a later ComfyUI drop that version, comfy_api.latest (which exports io, ui and
# ComfyExtension in 0.3.64 and in comfy_api/latest/__init__.py @168efe45) takes over.
NODE_API_MODULES = ("comfy_api.v0_0_2", "comfy_api.latest")
_node_api: SimpleNamespace | None = None


def resolve_node_api(candidates=NODE_API_MODULES) -> SimpleNamespace | None:
    """(io, ui, ComfyExtension, module name) from the first of ``candidates`` that imports, or None
    (logged as an error: the pack then registers no nodes)."""
    for name in candidates:
        try:
            module = importlib.import_module(name)
            api = SimpleNamespace(io=module.io, ui=module.ui, ComfyExtension=module.ComfyExtension, name=name)
        except (ImportError, AttributeError) as e:
            log.debug("DreamShot: node API %s unavailable (%s)", name, e)
            continue
        if name != candidates[0]:
            log.warning("DreamShot: %s is gone from this ComfyUI; registering the nodes through %s.",
                        candidates[0], name)
        return api
    log.error("DreamShot: none of %s imports in this ComfyUI, so DreamShot registers NO nodes. "
              "Update ComfyUI-DreamShot, or run it on ComfyUI 0.3.64 or later.", ", ".join(candidates))
    return None


def node_api() -> SimpleNamespace | None:
    """``resolve_node_api()``, once per process."""
    global _node_api
    if _node_api is None:
        _node_api = resolve_node_api()
    return _node_api


def __getattr__(name: str):
    """``from .compat import io, ui, ComfyExtension`` for the node modules."""
    if name in ("io", "ui", "ComfyExtension"):
        api = node_api()
        if api is None:
            raise ImportError(f"DreamShot: no V3 node API ({', '.join(NODE_API_MODULES)}) in this ComfyUI")
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- video ----------------------------------------------------------------------------------------
def video_from_file(path: str):
    """ComfyUI's VIDEO value for an MP4 on disk: ``InputImpl.VideoFromFile`` of the node API, which
    reads the file lazily and which Save Video re-muxes without decoding (an H.264 MP4 saved as
    auto/auto). Same constructor in 0.3.64 and in comfy_api/latest/_input_impl/video_types.py
    @0c6cfff6 (that one adds keyword-only trim and crop, not used here)."""
    api = node_api()
    module = importlib.import_module(api.name)
    return module.InputImpl.VideoFromFile(str(path))


# -- training -------------------------------------------------------------------------------------
@contextlib.contextmanager
def training_mode():
    """Set ``comfy.model_management.in_training`` for forward *and* backward of a training run.

    Newer Wan code runs comfy_kitchen kernels that have no backward pass unless that flag is set
    (comfy/ldm/flux/math.py @980c56ce apply_rope1; comfy/ldm/wan/model.py @0c9a69ae modulate;
    comfy/model_management.py @02b2b388 defines ``in_training = False``). 0.3.64 has no such flag:
    nothing is set there.
    """
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


def load_static_diffusion_model(path: str, model_options: dict):
    """comfy.sd.load_diffusion_model as a plain (static) ModelPatcher.

    The server's default patcher became ModelPatcherDynamic on NVIDIA/AMD (dynamic VRAM: main.py @02018c7e
    swaps comfy.model_patcher.CoreModelPatcher), which streams weights per op and whose patch_model asserts
    ``not load_weights`` (comfy/model_patcher.py @08d0e510). Training puts the whole model on its
    device or shards it with FSDP, so it asks for the static patcher through ``disable_dynamic``
    (comfy/sd.py @033046cc); 0.3.64's loader has no such argument and is always static.
    """
    import comfy.sd

    loader = comfy.sd.load_diffusion_model
    if "disable_dynamic" in inspect.signature(loader).parameters:
        return loader(path, model_options=model_options, disable_dynamic=True)
    return loader(path, model_options=model_options)


def is_dynamic(patcher) -> bool:
    """Whether ``patcher`` loads its weights dynamically (ModelPatcherDynamic; never in 0.3.64)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


# -- attention ------------------------------------------------------------------------------------
def attention_backend(func, previous, preferred=None):
    """The attention ComfyUI would run for a plain call, for DreamShot's sub-attentions.

    ComfyUI calls ``transformer_options["optimized_attention_override"](func, q, k, v, heads=...,
    transformer_options=..., **kwargs)`` with ``func`` its default backend. A model-level backend
    choice is itself such an override (ModelAttentionBackend -> ModelPatcher.set_model_optimized_attention,
    comfy/model_patcher.py @08d0e510: ``lambda _, *args, **kw: chosen(*args, **kw)``), as is any pack's
    attention patch set through the same hook; DreamShot's override wraps the one it finds (``previous``). Its per-shot,
    no-references and role sub-calls go through ``previous`` so that choice still applies; without
    one, the checkpoint's own choice (``preferred``, see ``preferred_attention``), else ``func``
    itself (0.3.64 stock: unchanged). ``previous`` must accept any q/k/v it is given (a backend does;
    an override that expects the model's full token sequence does not).
    """
    if previous is None:
        return func if preferred is None else preferred

    def chosen(q, k, v, heads, **kwargs):
        return previous(func, q, k, v, heads=heads, **kwargs)

    return chosen


def preferred_attention(diffusion_model, transformer_options, cross: bool):
    """The attention function the checkpoint asks for at this call, or None.

    Newer Wan layers carry a ComfyAttention (``comfy_attention``, configured from the checkpoint's
    ``<layer>.comfy_attention.config``: comfy-kitchen int8 attention where the GPU has the kernel) and pass
    it to optimized_attention as ``preferred_attention`` (comfy/ldm/wan/model.py @0c9a69ae). wrap_attn pops
    it before anything else and uses it only when no override is set (comfy/ldm/modules/attention.py
    @05080f60), so an override never sees it: the layer is found instead from the block index that
    forward_orig writes into transformer_options, and its self_attn or cross_attn. 0.3.64 has neither
    the layer attribute nor the index: None.
    """
    index = (transformer_options or {}).get("block_index")
    blocks = getattr(diffusion_model, "blocks", None)
    if not isinstance(index, int) or blocks is None or not 0 <= index < len(blocks):
        return None
    layer = getattr(blocks[index], "cross_attn" if cross else "self_attn", None)
    return getattr(getattr(layer, "comfy_attention", None), "function", None)


# Attention overrides that newer ComfyUI's own nodes install, by the module that defines them.
OVERRIDE_NODES = {"comfy_extras.nodes_sparse_attention": "Model Sparse Attention (BlockSparseAttention)"}


def override_name(override) -> str:
    """A person-readable name of an attention override: the core node that installs it, else its
    function's module and name."""
    module = getattr(override, "__module__", None) or type(override).__module__
    for suffix, node in OVERRIDE_NODES.items():
        if module == suffix or module.endswith("." + suffix):
            return f"the {node} node"
    name = getattr(override, "__qualname__", None) or type(override).__qualname__
    return f"an attention override installed by another node ({module}.{name})"


# -- model patches --------------------------------------------------------------------------------
def add_parameter_patch(patcher, key: str, value) -> None:
    """``patcher.add_object_patch(key, value)`` for a bare parameter, with ``value``'s dtype kept.

    Newer ComfyUI records every parameter's dtype at model creation (``<name>_comfy_model_dtype`` on its
    module: comfy/model_management.py ``archive_model_dtypes``, called by BaseModel.__init__), and
    ModelPatcherDynamic.load -> ``_load_list(for_dynamic=True, default_device=...)`` casts each parameter
    of a non-leaf module (Wan's ``blocks.N.modulation``, ``head.modulation``) in place to that dtype
    (``param.data = param.data.to(device, dtype=...)``, comfy/model_patcher.py @08d0e510): a float32
    patch on an fp8 model would turn fp8 for good. Where the record exists and differs, it is object-patched
    to ``value``'s dtype as well (and restored with the parameter on unpatch). 0.3.64 records nothing.
    """
    patcher.add_object_patch(key, value)
    module_path, _, name = key.rpartition(".")
    module = patcher.get_model_object(module_path) if module_path else patcher.model
    record = f"{name}_comfy_model_dtype"
    if getattr(module, record, value.dtype) != value.dtype:
        patcher.add_object_patch(f"{module_path}.{record}" if module_path else record, value.dtype)


# -- the Wan DiT ----------------------------------------------------------------------------------
def feed_forward_as_module_calls(ffn):
    """A forward for Wan's feed-forward [Linear, GELU(tanh), Linear] that calls each layer as a module.

    0.3.64's ``ffn`` is an nn.Sequential, whose forward is exactly this. Newer ComfyUI's WanFeedForward
    (comfy/ldm/wan/model.py @0c9a69ae) hands the second Linear to ``comfy.ops.linear_input_act``, whose
    INT8 and fp16-accumulation kernels read its weight without calling it (comfy/ops.py @0271a469);
    a patch on that layer's ``forward`` (Shot LoRA) needs the call.
    """
    def forward(x):
        return ffn[2](ffn[1](ffn[0](x)))
    return forward


# -- the Wan VAE ----------------------------------------------------------------------------------
def causal_conv_spatial_padding(conv) -> tuple[int, int]:
    """(height, width) zero padding of a Wan VAE CausalConv3d.

    0.3.64 keeps F.pad's 6-tuple in ``_padding`` (w, w, h, h, 2t, 0) and zeroes ``padding``; newer
    ComfyUI keeps only the causal time padding there as an int and the spatial padding in
    ``padding[1:]`` (comfy/ldm/wan/vae.py @dcbf1c1d).
    """
    pad = conv._padding
    if isinstance(pad, (tuple, list)):
        return int(pad[2]), int(pad[0])
    return int(conv.padding[1]), int(conv.padding[2])
