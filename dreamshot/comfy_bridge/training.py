"""ComfyUI-side glue for ``python -m dreamshot.train``: the trainer runs on ComfyUI's own Wan code.

- ComfyUI is imported by ``comfy_bridge.headless.import_comfy`` (the one headless start-up) before
  anything else from ``comfy_bridge`` (those modules import ``comfy`` at import time).
- ``load_dit`` / ``load_vae`` / ``load_text_encoder``: ComfyUI's loaders (comfy.sd), so the
  trained weights are exactly the weights LoadDreamShotModel later patches.
- ``TrainableAdapters``: LoRA (and optional full-block deltas) attached to a ModelPatcher clone
  as ComfyUI object patches / weight wrappers; saves with ComfyUI-native keys
  (``diffusion_model.blocks.{i}.self_attn.q.lora_up.weight`` ...), so the file loads in ComfyUI
  (``comfy.lora``, LoraLoaderModelOnly, LoadDreamShotModel) with no conversion.
- ``encode_text``: the nodes' text path (``text_encode``), re-exported for the trainer's cache.
- ``StoryModel``: the sampler's DreamShot patches (clean frames at t = 0 via per-frame
  timesteps, per-shot cross-attention) on a clone, plus training-only block replacements
  (gradient checkpointing, block index for RACL) and a self-attention hook
  that accumulates the RACL loss.
- Memory options (``dreamshot.train`` config): ``store_fp8`` (frozen block linears in float8, cast per
  layer by ComfyUI's ops), block swap and offloaded checkpointed block inputs (``StoryModel``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .text_encode import encode_text  # noqa: F401  (re-exported: the trainer's cache encodes through it)

log = logging.getLogger("DreamShot")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -- loading --------------------------------------------------------------------------------------
def load_dit(path: str, dtype: str = "bf16"):
    """The Wan T2V DiT (Wan2.1, Wan2.2-TI2V-5B, an A14B expert) as a ComfyUI MODEL, weights in
    ``dtype``: a static ModelPatcher (never dynamic VRAM), which training loads whole or shards with FSDP."""
    from .compat import load_static_diffusion_model
    from .wan_patches import check_wan_t2v

    _need_file("model.dit", path)
    m = load_static_diffusion_model(str(path), model_options={"dtype": DTYPES[dtype]})
    check_wan_t2v(m)
    return m


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                       "I32": torch.int32, "U8": torch.uint8}


def load_dit_on_meta(path: str, dtype: str = "bf16"):
    """``load_dit``'s model with no weights read: ComfyUI's own detection and classes (what
    comfy.sd.load_diffusion_model_state_dict does up to loading the weights), built on the meta device
    from the file's header. ``fill_sharded`` then gives every process only its FSDP shards, read from
    the memory-mapped file: the page cache holds the file once per machine, however many processes."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    from ..safetensors_header import read_header
    from .wan_patches import check_wan_t2v

    _need_file("model.dit", path)
    header = read_header(path)
    sd = {k: torch.empty(v["shape"], dtype=_SAFETENSORS_DTYPES[v["dtype"]], device="meta") for k, v in header.items()}
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    file_prefix = prefix if any(k.startswith(prefix) for k in header) else ""
    sd = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True) or sd
    config = comfy.model_detection.model_config_from_unet(sd, "")
    if config is None:
        raise RuntimeError(f"model.dit {path!r}: ComfyUI does not recognise this diffusion model")
    load_device = mm.get_torch_device()
    config.set_inference_dtype(DTYPES[dtype], mm.unet_manual_cast(DTYPES[dtype], load_device,
                                                                  config.supported_inference_dtypes))
    model = config.get_model(sd, "", device=torch.device("meta"))
    m = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    m.model.dreamshot_weights = (str(path), file_prefix)   # where fill_sharded reads them (clones share it)
    check_wan_t2v(m)
    return m


def fill_sharded(dm: torch.nn.Module, path: str, prefix: str, mesh) -> int:
    """Fill the FSDP-sharded (DTensor) parameters of ``dm``, allocated with ``to_empty``, from the
    safetensors file: each process reads one tensor at a time through the memory map and keeps only its
    shard. Returns the bytes kept."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor, distribute_tensor

    kept = 0
    with safe_open(path, framework="pt", device="cpu") as f, torch.no_grad():
        names = set(f.keys())
        for name, param in dm.named_parameters():
            key = prefix + name if prefix + name in names else name
            if key not in names:
                raise RuntimeError(f"model.dit {path!r} has no tensor {key!r}")
            full = f.get_tensor(key).to(param.dtype)
            if isinstance(param, DTensor):
                shard = distribute_tensor(full, mesh, param.placements, src_data_rank=None)
                param.copy_(shard.to(param.device_mesh.device_type))
                kept += param.to_local().nbytes
            else:
                param.copy_(full)
                kept += param.nbytes
            del full
    return kept


def load_vae(path: str):
    import comfy.sd
    import comfy.utils

    _need_file("model.vae", path)
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path), safe_load=True))


def load_text_encoder(path: str, config_override: dict | None = None):
    """UMT5 through comfy.sd.load_clip (type wan) with the arguments Load CLIP gives it, ComfyUI's
    embeddings folders included (so a prompt reads the same headless as in a graph, on a ComfyUI
    whose Wan tokenizer uses them); ``config_override`` replaces UMT5 config keys."""
    import comfy.sd
    import folder_paths

    _need_file("model.text_encoder", path)
    options = {"umt5xxl_model_config": dict(config_override)} if config_override else {}
    return comfy.sd.load_clip(ckpt_paths=[str(path)], embedding_directory=folder_paths.get_folder_paths("embeddings"),
                              clip_type=comfy.sd.CLIPType.WAN, model_options=options)


def _need_file(key: str, path) -> None:
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{key}: file {str(path)!r} not found")


def model_shift(m) -> float:
    """The sampling shift ComfyUI uses for this model (8.0 for Wan2.1 T2V)."""
    return float(m.get_model_object("model_sampling").shift)


def describe_base_model(m, path: str = "") -> str:
    """wan2.1_t2v_<size> for a WAN21 DiT (a Wan2.2-A14B expert has the 14B's shape: the file name tells),
    wan2.2_ti2v_5B for a WAN22 one (48 latent channels)."""
    import comfy.model_base

    dm = m.model.diffusion_model
    name = Path(path).name if path else ""
    if type(m.model) is comfy.model_base.WAN22:
        size = {3072: "5B"}.get(dm.dim, f"dim{dm.dim}-{len(dm.blocks)}blocks")
        return f"wan2.2_ti2v_{size}" + (f" ({name})" if name else "")
    size = {1536: "1.3B", 5120: "14B"}.get(dm.dim, f"dim{dm.dim}-{len(dm.blocks)}blocks")
    return f"wan2.1_t2v_{size}" + (f" ({name})" if name else "")


# -- memory options --------------------------------------------------------------------------------
def _cast_ops(module: torch.nn.Module):
    """ComfyUI ops (Linear, norms, Conv) under ``module``: the layers ComfyUI can cast per use."""
    for name, mod in module.named_modules():
        if hasattr(mod, "comfy_cast_weights"):
            yield name, mod


def store_fp8(m, skip_blocks: Sequence[int] = (), dtype: torch.dtype = torch.float8_e4m3fn) -> int:
    """Store the frozen Linear weights of the DiT blocks in ``dtype`` (float8_e4m3fn); returns the bytes saved.

    Each such layer then runs ComfyUI's cast path (``comfy_cast_weights``: ``comfy.ops.cast_bias_weight``
    casts the weight to the input's dtype and device per call), the path ComfyUI itself takes for a model
    loaded with UNETLoader's weight_dtype fp8_e4m3fn. Unlike that loader, only the block linears are
    rounded: biases, norms, modulation, embeddings, head and the blocks in ``skip_blocks`` (fully fine-tuned)
    keep their dtype. A LoRA on such a layer adds ``lora(x)`` to ``F.linear(x, cast(W_fp8))``, so it
    learns against the rounded weight; its file is the same LoRA file.
    """
    import comfy.ops

    saved = 0
    skip = set(skip_blocks)
    for i, block in enumerate(m.model.diffusion_model.blocks):
        if i in skip:
            continue
        for _, mod in _cast_ops(block):
            if isinstance(mod, comfy.ops.disable_weight_init.Linear) and mod.weight.dtype != dtype:
                before = mod.weight.nbytes
                mod.weight = torch.nn.Parameter(mod.weight.detach().to(dtype), requires_grad=False)
                mod.comfy_cast_weights = True
                saved += before - mod.weight.nbytes
    return saved


def swapped_blocks(num_blocks: int, blocks_to_swap: int) -> range:
    """The blocks that stay in CPU memory: the last ``blocks_to_swap`` (as musubi-tuner)."""
    if not 0 <= blocks_to_swap <= num_blocks:
        raise ValueError(f"train.blocks_to_swap = {blocks_to_swap}: this model has {num_blocks} blocks")
    return range(num_blocks - blocks_to_swap, num_blocks)


def _pin(t: torch.Tensor) -> torch.Tensor:
    try:
        return t.pin_memory()
    except RuntimeError as e:   # pinned memory is page-locked host RAM, which can run out
        log.warning("DreamShot: could not pin a swapped block's weights in host memory (%s); copies are slower", e)
        return t


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy of a checkpointed block input (always a copy, so on a CPU run it is still one)."""
    from ..memory import host_resident

    return host_resident(t.to("cpu", copy=True))


# -- trainable adapters -----------------------------------------------------------------------
class LoRALayer(torch.nn.Module):
    """y += (x @ down^T @ up^T) * alpha / rank; up starts at zero, so training starts at the base model."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.rank = rank
        self.down = torch.nn.Parameter(torch.empty(rank, in_features))
        self.up = torch.nn.Parameter(torch.zeros(out_features, rank))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.dropout = dropout
        bound = 1.0 / math.sqrt(in_features)   # kaiming_uniform(a=sqrt(5)), as torch.nn.Linear / PEFT
        with torch.no_grad():
            self.down.uniform_(-bound, bound, generator=generator)

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout)
        h = F.linear(x, self.down.to(x.dtype))
        return F.linear(h, self.up.to(x.dtype)) * self.scale


class WeightDelta(torch.nn.Module):
    """A ComfyUI weight function w -> w + delta (fp32 master delta), as nodes_train's BiasDiff."""

    def __init__(self, delta: torch.nn.Parameter):
        super().__init__()
        self.delta = delta

    def __call__(self, w):
        return (w.to(self.delta.dtype) + self.delta).to(w.dtype)

    def passive_memory_usage(self):
        return self.delta.nelement() * self.delta.element_size()

    def move_to(self, device):
        self.to(device=device)
        return self.passive_memory_usage()


def _lora_forward(original, lora: LoRALayer):
    def forward(x, *args, **kwargs):
        return original(x, *args, **kwargs) + lora(x)
    return forward


def _module_key(name: str) -> str:
    return name.replace(".", "__")


class TrainableAdapters(torch.nn.Module):
    """Every trainable tensor of a DreamShot fine-tune, keyed by its ComfyUI LoRA-file key.

    ``loras``: LoRA layers on ``diffusion_model.blocks.{i}.{target}`` linears.
    ``deltas``: full fine-tune of chosen blocks as zero-initialised deltas, saved as ComfyUI
    ``.diff`` / ``.diff_b`` patches (every linear and norm weight and bias of the block; not its
    ``modulation`` vector, which ComfyUI's LoRA loader cannot patch).
    """

    def __init__(self):
        super().__init__()
        self.loras = torch.nn.ModuleDict()
        self.deltas = torch.nn.ParameterDict()
        self.lora_modules: dict[str, str] = {}    # ModuleDict key -> "diffusion_model.blocks.0.self_attn.q"
        self.delta_keys: dict[str, str] = {}      # ParameterDict key -> "diffusion_model....diff"

    # -- ComfyUI LoRA file <-> parameters -----------------------------------------------------
    def comfy_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for key, lora in self.loras.items():
            name = self.lora_modules[key]
            for suffix, t in ((".lora_up.weight", lora.up), (".lora_down.weight", lora.down)):
                out[name + suffix] = t.detach().to("cpu", dtype or t.dtype).contiguous()
            out[name + ".alpha"] = lora.alpha.detach().to("cpu", torch.float32).clone()
        for key, p in self.deltas.items():
            out[self.delta_keys[key]] = p.detach().to("cpu", dtype or p.dtype).contiguous()
        return out

    def load_comfy_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a file written by ``comfy_state_dict``; every trainable tensor must be present."""
        want = self.comfy_state_dict()
        missing = sorted(set(want) - set(sd))
        unexpected = sorted(set(sd) - set(want))
        if missing or unexpected:
            raise ValueError(f"trainable state does not match this run: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (was it trained with other lora/full_finetune settings?)")
        with torch.no_grad():
            for key, lora in self.loras.items():
                name = self.lora_modules[key]
                lora.up.copy_(sd[name + ".lora_up.weight"])
                lora.down.copy_(sd[name + ".lora_down.weight"])
                lora.alpha.copy_(sd[name + ".alpha"])
            for key, p in self.deltas.items():
                p.copy_(sd[self.delta_keys[key]])

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(stable name, parameter) in a fixed order: the optimizer's parameter order."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


def _real(device: torch.device) -> torch.device:
    """Where trainable tensors start: the weights' device, or the CPU for a model still on meta."""
    return torch.device("cpu") if device.type == "meta" else device


def _comfy_ops_modules(block: torch.nn.Module):
    for name, mod in block.named_modules():
        if hasattr(mod, "weight_function") and getattr(mod, "weight", None) is not None:
            yield name, mod


def attach_trainable(m, rank: int, alpha: float, targets: Sequence[str], lora_blocks: Sequence[int],
                     full_blocks: Sequence[int] = (), dropout: float = 0.0, seed: int = 0,
                     full_modules: Sequence[str] = ()) -> TrainableAdapters:
    """Add LoRA (object patches on the linears' ``forward``) and full-block deltas (ComfyUI weight
    wrappers) to the ModelPatcher ``m``. Applied when ``m`` is loaded (load_models_gpu).
    ``full_modules``: top-level DiT modules (``patch_embedding``, ``head``, ...) trained whole too."""
    import comfy.utils

    adapters = TrainableAdapters()
    dm = m.model.diffusion_model
    n_blocks = len(dm.blocks)
    bad = [i for i in list(lora_blocks) + list(full_blocks) if not 0 <= i < n_blocks]
    if bad:
        raise ValueError(f"block indices {bad} do not exist: this model has blocks 0..{n_blocks - 1} "
                         "(Wan2.1 1.3B has 30, 14B has 40)")
    gen = torch.Generator().manual_seed(seed)
    for i in lora_blocks:
        for target in targets:
            name = f"diffusion_model.blocks.{i}.{target}"
            module = comfy.utils.get_attr(m.model, name)
            out_f, in_f = module.weight.shape
            lora = LoRALayer(in_f, out_f, rank, alpha, dropout, generator=gen).to(_real(module.weight.device))
            key = _module_key(name)
            adapters.loras[key] = lora
            adapters.lora_modules[key] = name
            m.add_object_patch(f"{name}.forward", _lora_forward(module.forward, lora))
    missing = [name for name in full_modules if not isinstance(getattr(dm, name, None), torch.nn.Module)]
    if missing:
        raise ValueError(f"full_finetune_modules {missing}: this model has no such module")
    whole = [(f"diffusion_model.blocks.{i}", dm.blocks[i]) for i in full_blocks]
    whole += [(f"diffusion_model.{name}", getattr(dm, name)) for name in full_modules]
    for prefix, module in whole:
        for sub, mod in _comfy_ops_modules(module):
            base = f"{prefix}.{sub}" if sub else prefix
            for attr, suffix in (("weight", ".diff"), ("bias", ".diff_b")):
                t = getattr(mod, attr, None)
                if t is None:
                    continue
                delta = torch.nn.Parameter(torch.zeros(t.shape, dtype=torch.float32, device=_real(t.device)))
                key = _module_key(base + suffix)
                adapters.deltas[key] = delta
                adapters.delta_keys[key] = base + suffix
                m.add_weight_wrapper(f"{base}.{attr}", WeightDelta(delta))
        # A block's (and the head's) own `modulation` stays frozen: ComfyUI (0.3.64) patches only parameters of leaf
        # modules when it loads a LoRA (ModelPatcher._load_list), so a modulation .diff would be
        # silently dropped at inference.
    return adapters


# -- the story model --------------------------------------------------------------------------
class RACLCollector:
    """Self-attention hook: RACL on the chosen blocks' q/k, then the normal attention."""

    def __init__(self, config, budget_bytes: int = 0):
        self.config = config          # dreamshot.roles.RACLConfig
        # racl.budget_bytes: passed on only when set, so 0 keeps dreamshot.roles' own default
        self.options = {"budget_bytes": int(budget_bytes)} if budget_bytes else {}
        self.role_map = None
        self.armed = False
        self.losses: list[torch.Tensor] = []

    def start(self, role_map) -> None:
        self.role_map = role_map
        self.losses = []
        self.armed = role_map is not None and bool(role_map.regions)

    def stop(self):
        """Stop recording (recomputation under gradient checkpointing must not record twice)."""
        self.armed = False
        return self.config.total(self.losses)

    def __call__(self, func, q, k, v, heads=None, transformer_options=None, **kwargs):
        from ..roles import racl_loss
        from .role_patch import BLOCK_KEY

        block = (transformer_options or {}).get(BLOCK_KEY)
        if self.role_map is not None and self.role_map.regions and block is not None \
                and self.config.uses_layer(block):
            loss = racl_loss(q, k, heads, self.role_map, kind=self.config.kind, eps=self.config.eps, **self.options)
            if self.armed:
                self.losses.append(loss)
        return func(q, k, v, heads=heads, transformer_options=transformer_options, **kwargs)


def _training_block(index: int, block: torch.nn.Module, grad_ckpt: bool, offload: bool = False):
    """patches_replace["dit"][("double_block", i)]: sets the block index (RACL) and checkpoints the
    block. It calls the block itself, never extra["original_block"]: that closure binds the forward
    loop's *last* block by the time backward recomputes.

    ``offload``: the block's input, which checkpointing keeps for the recomputation, is kept as a host
    copy and brought back to the device inside the checkpointed function (forward and recompute), so
    the device holds no block input between forward and backward."""
    from .role_patch import BLOCK_KEY

    def run(img, vec, txt, pe, options):
        return block(img, e=vec, freqs=pe, context=txt, context_img_len=None, transformer_options=options)

    def run_from_host(host, vec, txt, pe, options):
        return run(host.to(vec.device, copy=True), vec, txt, pe, options)

    def replacement(args, extra):
        options = {**args["transformer_options"], BLOCK_KEY: index}
        if grad_ckpt and torch.is_grad_enabled() and offload:
            img = checkpoint(run_from_host, _to_host(args["img"]), args["vec"], args["txt"], args["pe"], options,
                             use_reentrant=False)
        elif grad_ckpt and torch.is_grad_enabled():
            img = checkpoint(run, args["img"], args["vec"], args["txt"], args["pe"], options, use_reentrant=False)
        else:
            img = run(args["img"], args["vec"], args["txt"], args["pe"], options)
        return {"img": img}

    return replacement


class StoryModel:
    """A training clone of a ComfyUI Wan MODEL patched the DreamShot way.

    ``predict`` returns ComfyUI's denoised x0 for a packed story; clean frames are seen at t = 0
    (per-frame timesteps from the denoise mask), each shot frame cross-attends to its own prompt
    segment, and RACL is accumulated from the self-attention q/k of the chosen blocks.
    """

    def __init__(self, model, adapters: TrainableAdapters, gradient_checkpointing: bool = True, racl=None,
                 offload_activations: bool = False, blocks_to_swap: int = 0, racl_budget_bytes: int = 0):
        from .compat import is_dynamic
        from .wan_patches import SELF_ATTENTION_HOOKS_KEY, _attention_override, _clean_frame_patches, native_clean_frames

        if is_dynamic(model):
            # ModelPatcherDynamic (comfy/model_patcher.py @08d0e510) streams weights per op: load_models_gpu
            # leaves them on the offload device (``device`` below would read the CPU), it attaches no weight
            # wrappers (our full-block deltas) to the small modules it force-loads, and its patch_model
            # asserts on loading weights (the FSDP path).
            raise RuntimeError("DreamShot training needs a static ModelPatcher, got a dynamic-VRAM one "
                               "(ModelPatcherDynamic): load the DiT with dreamshot.comfy_bridge.training.load_dit.")
        m = model.clone()
        if not native_clean_frames(m):   # Wan2.2-TI2V-5B (WAN22) sees clean frames at t = 0 by itself
            for name, obj in _clean_frame_patches(m).items():
                m.add_object_patch(name, obj)
        to = m.model_options.setdefault("transformer_options", {})
        to["optimized_attention_override"] = _attention_override(to.get("optimized_attention_override"))
        blocks = m.model.diffusion_model.blocks
        if (offload_activations or blocks_to_swap) and not gradient_checkpointing:
            raise ValueError("offloaded activations and block swap need gradient checkpointing")
        for i, block in enumerate(blocks):
            m.set_model_patch_replace(_training_block(i, block, gradient_checkpointing, offload_activations),
                                      "dit", "double_block", i)
        self.patcher = m
        self.adapters = adapters
        self.swapped = swapped_blocks(len(blocks), blocks_to_swap)
        self.racl = RACLCollector(racl, racl_budget_bytes) if racl is not None and racl.lambda_racl > 0 else None
        self._hooks_key = SELF_ATTENTION_HOOKS_KEY

    @property
    def base_model(self):
        return self.patcher.model

    def load(self, device: torch.device | None = None, fsdp_mesh=None) -> None:
        """Apply the patches and put the model on its device (ComfyUI's load_models_gpu); with swapped
        blocks, apply them in host memory and move all but those blocks; with an FSDP mesh, shard every
        block (FSDP2, frozen weights): a model built by ``load_dit_on_meta`` is then filled shard by shard
        from its file, a loaded one is patched on the offload device first."""
        import comfy.model_management

        self.patcher.model.requires_grad_(False)
        if fsdp_mesh is None and not self.swapped:
            comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        elif fsdp_mesh is None:
            self._load_swapped(device or comfy.model_management.get_torch_device())
        else:
            from torch.distributed.fsdp import fully_shard

            on_meta = self.patcher.model.diffusion_model.patch_embedding.weight.is_meta
            # object patches and weight wrappers; with the model on meta nothing is moved (device None)
            self.patcher.patch_model(device_to=None if on_meta else self.patcher.offload_device)
            dm = self.patcher.model.diffusion_model
            for block in dm.blocks:
                fully_shard(block, mesh=fsdp_mesh)
            fully_shard(dm, mesh=fsdp_mesh)
            if on_meta:
                target = torch.device(fsdp_mesh.device_type, torch.cuda.current_device()) \
                    if fsdp_mesh.device_type == "cuda" else torch.device(fsdp_mesh.device_type)
                dm.to_empty(device=target)
                for name, child in self.patcher.model.named_children():
                    if name != "diffusion_model":
                        child.to(target)
                path, prefix = self.patcher.model.dreamshot_weights
                kept = fill_sharded(dm, path, prefix, fsdp_mesh)
                log.info("DreamShot: built the DiT on the meta device and read this process's shards (%.2f GiB) "
                         "from the memory-mapped %s", kept / 2 ** 30, Path(path).name)
            log.info("DreamShot: FSDP sharded the DiT's %d blocks over %d processes", len(dm.blocks),
                     fsdp_mesh.size())
        dev = device or self.device
        self.adapters.to(dev)

    def _load_swapped(self, device: torch.device) -> None:
        """Block swap: the swapped blocks' weights stay in (pinned) host memory and every ComfyUI op in
        them casts per use (``comfy_cast_weights``, ComfyUI's own low-VRAM path), so each weight is on the
        device only while its layer runs: in forward, and again in backward's recomputation, where autograd
        holds one block's copies until that block's backward is done (hence gradient checkpointing).
        The modulation vector is cast per use by the Wan block itself."""
        p = self.patcher
        p.patch_model(device_to=p.offload_device)   # object patches and weight wrappers, nothing moved
        dm = p.model.diffusion_model
        for name, child in dm.named_children():
            if name != "blocks":
                child.to(device)
        pin = device.type == "cuda"
        for i, block in enumerate(dm.blocks):
            if i not in self.swapped:
                block.to(device)
                continue
            for _, mod in _cast_ops(block):
                mod.comfy_cast_weights = True
            if pin:
                for prm in block.parameters():
                    prm.data = _pin(prm.data)
        for name, child in p.model.named_children():   # model_sampling and the like
            if name != "diffusion_model":
                child.to(device)
        p.model.device = device
        log.info("DreamShot: blocks %d..%d stay in host memory and are copied to %s per use (block swap)",
                 self.swapped.start, self.swapped.stop - 1, device)

    def resident_bytes(self) -> int:
        """Bytes of DiT weights kept on the compute device (all of them but the swapped blocks)."""
        from ..memory import tensor_bytes

        dm = self.patcher.model.diffusion_model
        host = {id(prm) for i in self.swapped for prm in dm.blocks[i].parameters()}
        return tensor_bytes(prm for prm in dm.parameters() if id(prm) not in host)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the DiT computes in: ComfyUI's manual-cast dtype, else its weight dtype."""
        base = self.patcher.model
        return base.manual_cast_dtype or base.get_dtype()

    @property
    def device(self) -> torch.device:
        if self.swapped:
            return self.patcher.model.diffusion_model.head.head.weight.device
        return next(self.patcher.model.diffusion_model.parameters()).device

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.patcher.model.process_latent_in(latent)

    def shift(self) -> float:
        return model_shift(self.patcher)

    def predict(self, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, denoise_mask: torch.Tensor,
                story: dict, role_map=None) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(denoised x0 [B, C, F, h, w] fp32, lambda x RACL) for one packed story."""
        from .wan_patches import STORY_KEY

        to = dict(self.patcher.model_options["transformer_options"])
        to[STORY_KEY] = story
        if self.racl is not None:
            to[self._hooks_key] = self.racl
            self.racl.start(role_map)
        try:
            denoised = self.patcher.model.apply_model(x_t, sigma, c_crossattn=context, denoise_mask=denoise_mask,
                                                      transformer_options=to)
        finally:
            racl = self.racl.stop() if self.racl is not None else 0.0
        return denoised, racl


def story_options_for(layout, frame_segments: Sequence[int], num_segments: int, segment_length: int,
                      masked_context=None) -> dict:
    """wan_patches.story_options for a story built from cached tensors (no StorySequence needed).
    ``masked_context``: the [1, n * L, C] prompt rows whose zero padding rows cross-attention hides
    (``data.mask_text_padding``); None attends to them, as Wan does."""
    from .wan_patches import story_options

    seq = SimpleNamespace(layout=layout, plan=SimpleNamespace(frame_segments=list(frame_segments)),
                          num_segments=num_segments, segment_length=segment_length,
                          positive=masked_context, negative=masked_context)
    return story_options(seq, mask_padding=masked_context is not None)
