"""One test (or more) per shim of dreamshot.comfy_bridge.compat, the ComfyUI version differences.

Every shim runs for real on the pinned ComfyUI 0.3.64. The newer behaviour it adapts to cannot be
run here (the ~0.38.1 Comfy-Org/ComfyUI sources are only readable), so it is exercised with the
smallest faithful stand-in of the newer object; each stand-in names the file and commit it mirrors.
Last, the decision on image tokens beyond the story (wan_patches._check_tokens), on the pinned DiT.
The stand-ins live in tests/support/newer_comfy.py (shared with tests/test_comfy_newer_breaks.py, which
covers the 0.38.1 breaks of issue 23).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support import newer_comfy
from support.newer_comfy import AttentionTensorContainer, newer_wrap_attn, set_model_optimized_attention

from dreamshot.attention import NO_TEXT, sdpa_attention
from dreamshot.layout import StoryLayout

REPO = Path(__file__).resolve().parents[1]
W = H = 64            # 8x8 latent: 16 tokens per frame on the tiny DiT (2x2 patches)
SEG = 8               # prompt segment length of the test story
FRAME_SEGMENTS = [NO_TEXT, 0, 1]   # one reference frame, then two shots with their own prompts


def _layout():
    return StoryLayout(num_refs=1, num_shots=2, width=W, height=H)


def _sequence():
    """What wan_patches.patch_for_story reads of a story (no VAE or text encoder needed)."""
    return SimpleNamespace(layout=_layout(), plan=SimpleNamespace(frame_segments=list(FRAME_SEGMENTS)),
                           num_segments=2, segment_length=SEG)


def _inputs(seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    lay = _layout()
    x = torch.randn(batch, 16, lay.num_latent_frames, lay.latent_height, lay.latent_width, generator=g)
    context = torch.randn(batch, 2 * SEG, 4096, generator=g)
    return x, context


def _forward(m, x, context, **options):
    """One pass of the patched Wan DiT, with extra transformer_options."""
    to = {**m.model_options["transformer_options"], **options}
    with torch.no_grad():
        return m.model.apply_model(x, torch.tensor([0.5]), c_crossattn=context, transformer_options=to)


# -- node API: comfy_api.v0_0_2, else comfy_api.latest -----------------------------------------------
def test_node_api_is_v0_0_2_on_the_pinned_comfyui(comfy_headless):
    import comfy_api.v0_0_2

    from dreamshot.comfy_bridge import compat

    api = compat.resolve_node_api()
    assert api.name == "comfy_api.v0_0_2"
    assert api.io is comfy_api.v0_0_2.io and api.ComfyExtension is comfy_api.v0_0_2.ComfyExtension


def test_node_api_falls_back_to_latest_then_logs_an_error(comfy_headless, monkeypatch, caplog):
    """Stand-in for a ComfyUI without comfy_api.v0_0_2: the module made unimportable. comfy_api.latest
    exports io, ui and ComfyExtension in 0.3.64 and in comfy_api/latest/__init__.py @168efe45."""
    import comfy_api.latest

    from dreamshot.comfy_bridge import compat

    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)
    with caplog.at_level(logging.WARNING, logger="DreamShot"):
        api = compat.resolve_node_api()
    assert api.name == "comfy_api.latest" and api.io is comfy_api.latest.io and api.ui is comfy_api.latest.ui
    assert "comfy_api.v0_0_2 is gone" in caplog.text

    monkeypatch.setitem(sys.modules, "comfy_api.latest", None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="DreamShot"):
        assert compat.resolve_node_api() is None
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "registers NO nodes" in caplog.text


def _import_pack(name):
    """The repo's __init__.py imported as ComfyUI imports a pack (a package under a path-derived name)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_pack_names():
    names = []
    yield names
    for name in names:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_pack_registers_through_latest_and_nothing_without_an_api(comfy_headless, monkeypatch, caplog,
                                                                   fresh_pack_names):
    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)
    fresh_pack_names.append("dreamshot_pack_compat_latest")
    pack = _import_pack(fresh_pack_names[-1])
    ext = asyncio.run(pack.comfy_entrypoint())
    ids = {node.define_schema().node_id for node in asyncio.run(ext.get_node_list())}
    assert {"DreamShotSampler", "DreamShotShotSequencePack", "LoadDreamShotModel"} <= ids
    assert pack.WEB_DIRECTORY == "./js"

    monkeypatch.setitem(sys.modules, "comfy_api.latest", None)
    fresh_pack_names.append("dreamshot_pack_compat_none")
    with caplog.at_level(logging.ERROR, logger="DreamShot"):
        pack = _import_pack(fresh_pack_names[-1])
    assert not hasattr(pack, "comfy_entrypoint") and not hasattr(pack, "WEB_DIRECTORY")
    assert "registers NO nodes" in caplog.text


# -- training: comfy.model_management.in_training -------------------------------------------------
def test_training_mode_adds_no_flag_to_the_pinned_comfyui(comfy_headless):
    import comfy.model_management as mm

    from dreamshot.comfy_bridge.compat import training_mode

    assert not hasattr(mm, "in_training")
    with training_mode():
        assert not hasattr(mm, "in_training")
    assert not hasattr(mm, "in_training")


@pytest.fixture
def newer_training_flag(comfy_headless, monkeypatch):
    """comfy/model_management.py @02b2b388: ``in_training = False`` at module level."""
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "in_training", False, raising=False)
    return mm


def test_training_mode_sets_and_restores_the_newer_flag(newer_training_flag):
    from dreamshot.comfy_bridge.compat import training_mode

    mm = newer_training_flag
    with training_mode():
        assert mm.in_training is True
    assert mm.in_training is False
    with pytest.raises(KeyError):
        with training_mode():
            raise KeyError("interrupted")
    assert mm.in_training is False


class _NoBackward(torch.autograd.Function):
    """A comfy_kitchen kernel: forward only (diffusion-pipe PR 496 reports ck.apply_rope1 has no backward)."""

    @staticmethod
    def forward(ctx, x, freqs):
        return _NEWER_ROPE["torch"](x, freqs)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("comfy_kitchen kernel has no backward")


_NEWER_ROPE = {}


@pytest.fixture
def newer_rope(newer_training_flag, monkeypatch):
    """comfy/ldm/flux/math.py @980c56ce apply_rope1: the torch path only when in_training, else the
    comfy_kitchen kernel. Patched where the pinned Wan DiT calls it (comfy.ldm.wan.model.apply_rope1)."""
    import comfy.ldm.wan.model as wan

    _NEWER_ROPE["torch"] = wan.apply_rope1

    def apply_rope1(x, freqs_cis):
        if newer_training_flag.in_training:
            return _NEWER_ROPE["torch"](x, freqs_cis)
        return _NoBackward.apply(x, freqs_cis)

    monkeypatch.setattr(wan, "apply_rope1", apply_rope1)


def _story_model(tiny_models_dir):
    from dreamshot.comfy_bridge import training as bridge

    base = bridge.load_dit(str(tiny_models_dir / "dit.safetensors"), "fp32")
    adapters = bridge.attach_trainable(base, rank=2, alpha=2.0, targets=["self_attn.q"], lora_blocks=[0, 1])
    sm = bridge.StoryModel(base, adapters, gradient_checkpointing=True)
    sm.load(torch.device("cpu"))
    return sm, adapters


def _training_step(sm):
    from dreamshot.comfy_bridge.training import story_options_for

    x, context = _inputs(seed=3)
    mask = torch.tensor(_layout().denoise_mask_values()).view(1, 1, -1, 1, 1).expand(1, 1, -1, 8, 8)
    story = story_options_for(_layout(), FRAME_SEGMENTS, 2, SEG)
    denoised, _ = sm.predict(x, torch.tensor([0.6]), context, mask.contiguous(), story)
    denoised.square().mean().backward()


def test_training_backward_needs_the_flag_under_newer_kernels(newer_rope, tiny_models_dir):
    """Forward and backward (gradient checkpointing recomputes the blocks inside backward) through the
    real pinned DiT with the newer rope: it trains only inside training_mode."""
    from dreamshot.comfy_bridge.compat import training_mode

    sm, adapters = _story_model(tiny_models_dir)
    with pytest.raises(RuntimeError, match="no backward"):
        _training_step(sm)
    adapters.zero_grad(set_to_none=True)
    with training_mode():
        _training_step(sm)
    grads = [p.grad for _, p in adapters.named_trainable()]
    assert all(g is not None for g in grads) and any(g.abs().max() > 0 for g in grads)


def test_trainer_runs_its_loop_in_training_mode(newer_training_flag, monkeypatch):
    from dreamshot.train.trainer import Trainer

    seen = []
    trainer = object.__new__(Trainer)   # no config or model: only the wiring of train() is under test
    monkeypatch.setattr(Trainer, "setup", lambda self: None)
    monkeypatch.setattr(Trainer, "_train_loop", lambda self: seen.append(newer_training_flag.in_training) or "done")
    assert trainer.train() == "done"
    assert seen == [True] and newer_training_flag.in_training is False


# -- dynamic VRAM: ModelPatcherDynamic --------------------------------------------------------------
def test_load_static_diffusion_model_on_the_pinned_comfyui(tiny_models_dir):
    import comfy.model_patcher

    from dreamshot.comfy_bridge.compat import is_dynamic, load_static_diffusion_model

    m = load_static_diffusion_model(str(tiny_models_dir / "dit.safetensors"), {"dtype": torch.float32})
    assert type(m) is comfy.model_patcher.ModelPatcher and not is_dynamic(m)


def test_load_static_diffusion_model_asks_the_newer_loader_for_a_static_patcher(comfy_headless, monkeypatch):
    import comfy.sd

    from dreamshot.comfy_bridge.compat import load_static_diffusion_model

    calls = []

    def load_diffusion_model(unet_path, model_options={}, disable_dynamic=False):   # comfy/sd.py @033046cc
        calls.append((unet_path, model_options, disable_dynamic))
        return "patcher"

    monkeypatch.setattr(comfy.sd, "load_diffusion_model", load_diffusion_model)
    assert load_static_diffusion_model("dit.safetensors", {"dtype": torch.bfloat16}) == "patcher"
    assert calls == [("dit.safetensors", {"dtype": torch.bfloat16}, True)]


def test_training_refuses_a_dynamic_patcher(tiny_models_dir):
    from dreamshot.comfy_bridge import training as bridge

    base = newer_comfy.dynamic_patcher(bridge.load_dit(str(tiny_models_dir / "dit.safetensors"), "fp32"))
    with pytest.raises(RuntimeError, match="static ModelPatcher"):
        bridge.StoryModel(base, bridge.TrainableAdapters())


def test_lora_modulation_diffs_apply_without_loading_weights(tiny_models_dir, tmp_path):
    """The LoRA slots patch bare parameters (Wan's modulation tables) as object patches. A dynamic
    patcher applies object patches in patch_model(load_weights=False) and loads weights itself, per op."""
    import safetensors.torch

    from dreamshot.comfy_bridge import training as bridge
    from dreamshot.comfy_bridge.compat import is_dynamic
    from dreamshot.comfy_bridge.lora import apply_lora

    model = newer_comfy.dynamic_patcher(bridge.load_dit(str(tiny_models_dir / "dit.safetensors"), "fp32"))
    base = {k: v.clone() for k, v in model.model.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    sd = {"diffusion_model.blocks.0.diff_m": torch.randn(base["diffusion_model.blocks.0.modulation"].shape, generator=g),
          "diffusion_model.head.modulation.diff": torch.randn(base["diffusion_model.head.modulation"].shape, generator=g),
          "diffusion_model.blocks.1.norm3.diff": torch.randn(base["diffusion_model.blocks.1.norm3.weight"].shape,
                                                             generator=g)}
    path = tmp_path / "with_modulation.safetensors"
    safetensors.torch.save_file(sd, str(path))

    m = apply_lora(model, str(path), 0.5)
    assert is_dynamic(m) and "diffusion_model.blocks.1.norm3.weight" in m.patches   # weights: the patcher's own load
    m.patch_model(load_weights=False)
    try:
        after = {k: v.clone() for k, v in m.model.state_dict().items()}
    finally:
        m.unpatch_model(unpatch_weights=False)
    for key, diff in (("diffusion_model.blocks.0.modulation", sd["diffusion_model.blocks.0.diff_m"]),
                      ("diffusion_model.head.modulation", sd["diffusion_model.head.modulation.diff"])):
        torch.testing.assert_close(after[key], base[key] + 0.5 * diff)
    assert torch.equal(model.model.state_dict()["diffusion_model.blocks.0.modulation"],
                       base["diffusion_model.blocks.0.modulation"])   # unpatched: the input model is unchanged


# -- attention: the backend ComfyUI chose -----------------------------------------------------------
class _Backend:
    """A chosen attention backend that records the (query, key) lengths of every call it gets."""

    def __init__(self, attention):
        self.attention = attention
        self.calls = []
        self.kwargs = []

    def __call__(self, q, k, v, heads, **kwargs):
        self.calls.append((q.shape[1], k.shape[1]))
        self.kwargs.append(sorted(kwargs))
        return self.attention(q, k, v, heads, **kwargs)


def test_without_an_earlier_override_sub_attentions_use_comfys_default_unchanged():
    from dreamshot.comfy_bridge.compat import attention_backend

    def default(q, k, v, heads, **kwargs):
        return q

    assert attention_backend(default, None) is default   # 0.3.64 stock: the same call as before


def test_every_attention_of_a_story_reaches_the_chosen_backend(tiny_wan_model):
    """Pinned DiT, a backend chosen the way newer ComfyUI's Model Attention Backend node chooses it
    (a real ComfyUI attention function behind set_model_optimized_attention), then the story patch:
    stock self-attention, the per-shot cross-attention's per-frame calls, the no-references split and a
    self-attention hook's calls all go to that backend, and the result equals ComfyUI's default."""
    import comfy.ldm.modules.attention as attention

    from dreamshot.comfy_bridge.wan_patches import NO_REFS_KEY, SELF_ATTENTION_HOOKS_KEY, patch_for_story

    chosen = _Backend(attention.attention_pytorch)
    picked = tiny_wan_model.clone()
    set_model_optimized_attention(picked.model_options, chosen)
    m = patch_for_story(picked, _sequence())
    x, context = _inputs()
    out = _forward(m, x, context)
    n, blocks = _layout().num_tokens, 2
    assert chosen.calls.count((n, n)) == blocks                           # self-attention, passed through
    cross = [c for c in chosen.calls if c != (n, n)]
    assert len(cross) >= blocks and all(k == SEG for _, k in cross)      # each frame against its own prompt
    assert all("_inside_attn_wrapper" in kw for kw in chosen.kwargs)     # called as ComfyUI calls a backend
    torch.testing.assert_close(out, _forward(patch_for_story(tiny_wan_model, _sequence()), x, context),
                               rtol=1e-5, atol=1e-5)

    chosen.calls.clear()
    _forward(m, x, context, **{NO_REFS_KEY: True})
    refs = _layout().num_refs * _layout().tokens_per_frame
    assert refs not in (SEG, n - refs) and n - refs != SEG
    # the split runs in row slices (guidance.self_attention_without_refs): every query row once per block
    assert sum(q for q, k in chosen.calls if k == refs) == refs * blocks
    assert sum(q for q, k in chosen.calls if k == n - refs) == (n - refs) * blocks
    assert all(k in (refs, n - refs, SEG) for _, k in chosen.calls)

    chosen.calls.clear()
    hooked = []

    def hook(func, q, k, v, heads=None, transformer_options=None, **kwargs):   # as role_patch's hook calls it
        hooked.append(q.shape[1])
        return func(q, k, v, heads=heads, transformer_options=transformer_options, **kwargs)

    _forward(m, x, context, **{SELF_ATTENTION_HOOKS_KEY: hook})
    assert hooked == [n] * blocks and chosen.calls.count((n, n)) == blocks


def test_newer_container_calls_reach_the_chosen_backend(comfy_headless):
    """The calls newer Wan makes (comfy/ldm/wan/model.py @0c9a69ae: q, k, v in containers, heads and
    preferred_attention by keyword) through the newer wrapper, with a chosen backend that has a
    container_function (as comfy-kitchen int8 attention does): DreamShot's override gets plain tensors,
    and none of its sub-attentions falls back to ComfyUI's default backend."""
    from dreamshot.comfy_bridge.training import story_options_for
    from dreamshot.comfy_bridge.wan_patches import STORY_KEY, _attention_override
    from dreamshot.attention import per_shot_cross_attention

    default_calls = []

    def default(q, k, v, heads, **kwargs):
        default_calls.append(q.shape[1])
        return sdpa_attention(q, k, v, heads)

    optimized_attention = newer_wrap_attn(default)
    chosen = _Backend(lambda q, k, v, heads, **kw: sdpa_attention(q, k, v, heads))
    chosen.container_function = lambda *a, **kw: pytest.fail("a backend's container path is for its own override")
    model_options = {"transformer_options": {}}
    set_model_optimized_attention(model_options, chosen)
    story = story_options_for(_layout(), FRAME_SEGMENTS, 2, SEG)
    to = {"optimized_attention_override": _attention_override(model_options["transformer_options"]
                                                                ["optimized_attention_override"]),
          STORY_KEY: story}
    n, heads, inner = _layout().num_tokens, 2, 2 * 8
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n, inner, generator=g) for _ in range(3))
    kc, vc = (torch.randn(1, 2 * SEG, inner, generator=g) for _ in range(2))

    def call(q, k, v):   # as WanSelfAttention / WanT2VCrossAttention call it
        containers = [AttentionTensorContainer(t) for t in (q, k, v)]
        return optimized_attention(*containers, heads=heads, preferred_attention=object(), transformer_options=to)

    torch.testing.assert_close(call(q, k, v), sdpa_attention(q, k, v, heads))
    torch.testing.assert_close(call(q, kc, vc), per_shot_cross_attention(q, kc, vc, heads, FRAME_SEGMENTS, 16, 2))
    assert default_calls == [] and chosen.calls[0] == (n, n) and all(k == SEG for _, k in chosen.calls[1:])


# -- the Wan VAE: CausalConv3d padding ---------------------------------------------------------------
class NewerCausalConv3d(torch.nn.Conv3d):
    """comfy/ldm/wan/vae.py @dcbf1c1d CausalConv3d.__init__: the time padding as an int in _padding,
    the spatial padding kept in .padding."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._padding = 2 * self.padding[0]
        self.padding = (0, self.padding[1], self.padding[2])


@pytest.mark.parametrize("kernel, padding", [(3, 1), ((3, 1, 5), (1, 0, 2)), (1, 0)])
def test_causal_conv_padding_and_the_block_vae_path(comfy_headless, kernel, padding):
    import comfy.ldm.wan.vae as wan_vae

    from dreamshot.comfy_bridge.compat import causal_conv_spatial_padding
    from dreamshot.proof.block_vae import _conv

    pinned = wan_vae.CausalConv3d(4, 6, kernel, padding=padding)
    newer = NewerCausalConv3d(4, 6, kernel, padding=padding)
    with torch.no_grad():
        pinned.weight.copy_(torch.randn(pinned.weight.shape, generator=torch.Generator().manual_seed(2)))
        pinned.bias.copy_(torch.randn(6, generator=torch.Generator().manual_seed(3)))
        newer.load_state_dict(pinned.state_dict())
    want = (padding[1], padding[2]) if isinstance(padding, tuple) else (padding, padding)
    assert causal_conv_spatial_padding(pinned) == want == causal_conv_spatial_padding(newer)
    x = torch.randn(2, 4, 8, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        one_frame = pinned(x.unsqueeze(2)).squeeze(2)   # the pinned module itself on a single frame
        torch.testing.assert_close(_conv(pinned, x), one_frame)
        assert torch.equal(_conv(newer, x), _conv(pinned, x))


# -- image tokens beyond the story: refused ---------------------------------------------------------
def test_extra_trailing_tokens_are_refused_with_the_cause_and_fix(tiny_wan_model):
    """Pinned WAN21 appends time_dim_concat frames as trailing tokens, the way newer ComfyUI appends
    context_latents (comfy/ldm/wan/model.py @0c9a69ae forward_orig): the story patch refuses them."""
    from dreamshot.comfy_bridge.wan_patches import patch_for_story
    from dreamshot.errors import DreamShotInputError

    m = patch_for_story(tiny_wan_model, _sequence())
    x, context = _inputs()
    assert _forward(m, x, context).shape == x.shape
    extra = torch.randn(1, 16, 1, 8, 8)
    with pytest.raises(DreamShotInputError) as err:
        with torch.no_grad():
            m.model.apply_model(x, torch.tensor([0.5]), c_crossattn=context, time_dim_concat=extra,
                                transformer_options=m.model_options["transformer_options"])
    assert err.value.input_name == "model"
    assert "16 image tokens beyond the story's 48" in str(err.value) and "context_latents" in str(err.value)


def test_fewer_tokens_than_the_story_name_the_sequence(comfy_headless):
    from dreamshot.comfy_bridge.wan_patches import _check_tokens
    from dreamshot.errors import DreamShotInputError

    _check_tokens(48, 48)
    with pytest.raises(DreamShotInputError, match="packed for 48") as err:
        _check_tokens(32, 48)
    assert err.value.input_name == "sequence"


def test_a_story_patch_replaces_an_earlier_story_patch(tiny_wan_model):
    """Patching a story model again wraps the backend under the first patch, not the first patch
    (whose token check would refuse the second patch's sub-attentions)."""
    from dreamshot.comfy_bridge.wan_patches import patch_for_story

    once = patch_for_story(tiny_wan_model, _sequence())
    twice = patch_for_story(once, _sequence())
    override = twice.model_options["transformer_options"]["optimized_attention_override"]
    assert override.dreamshot_previous is None
    x, context = _inputs()
    torch.testing.assert_close(_forward(twice, x, context), _forward(once, x, context))


# -- Wan's feed-forward as module calls (Shot LoRA on ffn.2) ---------------------------------------------
def test_feed_forward_as_module_calls_reaches_a_bypassed_second_linear(comfy_headless):
    """Newer WanFeedForward (comfy/ldm/wan/model.py @0c9a69ae) hands ffn.2 to comfy.ops.linear_input_act,
    whose INT8 / fp16-accumulation kernels read its weight without calling it (comfy/ops.py @0271a469);
    the stand-in does the same. The replacement gives the same output and calls ffn.2; on 0.3.64's
    nn.Sequential it is the Sequential's own forward, bit for bit."""
    import torch.nn.functional as F

    from dreamshot.comfy_bridge.compat import feed_forward_as_module_calls

    class WanFeedForwardStandIn(torch.nn.Sequential):
        def forward(self, x):
            return F.linear(self[1](self[0](x)), self[2].weight, self[2].bias)

    layers = (torch.nn.Linear(4, 6), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(6, 3))
    x = torch.randn(2, 5, 4)
    newer, pinned = WanFeedForwardStandIn(*layers), torch.nn.Sequential(*layers)
    called = []
    layers[2].register_forward_hook(lambda *args: called.append(True))
    expected = newer(x)
    assert not called
    assert torch.equal(feed_forward_as_module_calls(newer)(x), expected) and called == [True]
    assert torch.equal(feed_forward_as_module_calls(pinned)(x), pinned(x))
