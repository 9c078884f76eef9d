"""Shot LoRA inside the real, pinned ComfyUI on the tiny Wan2.1 DiT, with synthetic LoRAs written at
test time in ComfyUI-native keys.

Every patched linear layer's input and output are recorded during real DreamShot sampling (ComfyUI's
samplers, CFG batches, chunks). Each output row is then checked against the same layer computed from
the same input: rows of unscoped tokens must equal the unpatched layer bit for bit, rows of scoped
tokens the layer with the LoRA merged by ComfyUI's own code (comfy.lora.load_lora +
comfy.lora.calculate_weight, as ModelPatcher merges a LoRA) within fp32 rounding (rounding_bound).

The VAE is a pure-torch stand-in with the Wan VAE's time chunking (packing is all it serves here);
prompts are random 4096-wide encodings zero-padded to 512 rows like UMT5's.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from support.casts import random_image

pytestmark = pytest.mark.comfyui

W = H = 64
# Layers the synthetic LoRAs touch: image-token and text-row layers of both blocks, text embedding, head.
IMAGE_LAYERS = [f"blocks.{i}.{m}" for i in (0, 1) for m in ("self_attn.q", "self_attn.v", "self_attn.o",
                                                                "cross_attn.q", "cross_attn.o", "ffn.0", "ffn.2")]
TEXT_LAYERS = ["blocks.0.cross_attn.k", "blocks.1.cross_attn.v", "text_embedding.0", "text_embedding.2"]
LAYERS = IMAGE_LAYERS + TEXT_LAYERS + ["head.head"]


class StandInVAE:
    """Mean over each Wan time chunk (1, 4, 4, ...), 8x8 average pool, 3 -> 16 channels."""

    def encode(self, pixels):
        chunks = [pixels[:1]] + [pixels[i:i + 4] for i in range(1, pixels.shape[0], 4)]
        frames = torch.stack([c.mean(0) for c in chunks])
        return F.avg_pool2d(frames.movedim(-1, 1), 8).repeat(1, 6, 1, 1)[:, :16].movedim(0, 1).unsqueeze(0)

    def decode(self, latent):
        up = F.interpolate(latent[0, :3].movedim(1, 0), scale_factor=8, mode="nearest").movedim(1, -1)
        return torch.cat([up[:1]] + [up[i:i + 1].expand(4, -1, -1, -1) for i in range(1, up.shape[0])]).unsqueeze(0)


def encode_text(text: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    out = torch.zeros(1, 512, 4096)
    out[:, : 2 + len(text.split())] = torch.randn(1, 2 + len(text.split()), 4096, generator=g)
    return out


def make_story(pack_module, shot_names, mode="reference_to_shot"):
    story = pack_module("story")
    chars = [story.Character("Mira", random_image(1, H, W), description="a woman in a green coat"),
             story.Character("Theo", random_image(2, H, W), description="a man in a red hat")]
    shots = [story.Shot(f"shot {j + 1}: " + (" and ".join(names) or "an empty street"), tuple(names))
             for j, names in enumerate(shot_names)]
    plan = story.plan_story(chars if mode != "text_to_shot" else [], shots, W, H, mode=mode, check_budget=False)
    return story.encode_story(plan, StandInVAE(), encode_text, negative_prompt="blurry")


# -- LoRA files --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory, comfy_headless):
    import folder_paths

    loras, dreamshot = tmp_path_factory.mktemp("loras"), tmp_path_factory.mktemp("dreamshot_slot")
    folder_paths.add_model_folder_path("loras", str(loras))
    folder_paths.add_model_folder_path("dreamshot", str(dreamshot))
    return loras, dreamshot


def write_lora(path, model, layers=LAYERS, seed=0, rank=4, alpha=2.0, bias_layers=("blocks.0.ffn.0",), extra=None):
    """A LoRA in ComfyUI-native keys (diffusion_model.<layer>.lora_up/lora_down/alpha, .diff_b)."""
    import safetensors.torch

    sd = model.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers:
        out_f, in_f = sd[f"{layer}.weight"].shape
        key = f"diffusion_model.{layer}"
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * 0.3
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) / in_f ** 0.5
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    for layer in bias_layers:
        tensors[f"diffusion_model.{layer}.diff_b"] = torch.randn(sd[f"{layer}.bias"].shape, generator=g) * 0.1
    tensors.update(extra or {})
    safetensors.torch.save_file(tensors, str(path))
    return path


def merged_weights(model, base, loras):
    """{layer: (weight, bias)}: ``base`` with every (path, strength) of ``loras`` merged by ComfyUI's own
    code (comfy.sd.load_lora_for_models, then comfy.lora.calculate_weight as ModelPatcher does)."""
    import comfy.lora
    import comfy.sd
    import comfy.utils

    m = model
    for path, strength in loras:
        m, _ = comfy.sd.load_lora_for_models(m, None, comfy.utils.load_torch_file(str(path), safe_load=True),
                                             strength, 0)
    out = {}
    for layer in LAYERS:
        pair = []
        for param, value in zip(("weight", "bias"), base[layer]):
            key = f"diffusion_model.{layer}.{param}"
            value = value.clone().float()
            pair.append(comfy.lora.calculate_weight(m.patches[key], value, key) if key in m.patches else value)
        out[layer] = tuple(pair)
    return out


# -- recording a sampling run --------------------------------------------------------------------------
class Recorder:
    """Forward hooks on the LoRA's layers: (input, output) of every call, per pass when chunked."""

    def __init__(self, model, layers=LAYERS):
        self.model, self.passes, self.handles = model, [[]], []
        for layer in layers:
            module = model.model.diffusion_model.get_submodule(layer)
            self.handles.append(module.register_forward_hook(
                lambda mod, inp, out, layer=layer: self.passes[-1].append((layer, inp[0].detach().clone(),
                                                                           out.detach().clone()))))

    def new_pass(self, _sub=None):
        if self.passes[-1]:
            self.passes.append([])

    def close(self):
        for h in self.handles:
            h.remove()


def run(pack_module, model, seq, record_model, steps=1, cfg=2.0, ref_cfg=1.0, **chunking):
    sampling = pack_module("comfy_bridge.sampling")
    rec = Recorder(record_model)
    try:
        with torch.inference_mode():
            if chunking:
                sampling.sample_long_story(model, seq, 3, steps, cfg, "euler", "simple", ref_cfg=ref_cfg,
                                           on_chunk=rec.new_pass, **chunking)
            else:
                sampling.sample_story(model, seq, 3, steps, cfg, "euler", "simple", ref_cfg=ref_cfg)
    finally:
        rec.close()
    return rec.passes


def rows_mask(n, spans):
    mask = torch.zeros(n, dtype=torch.bool)
    for a, b in spans:
        mask[a:b] = True
    return mask


def rounding_bound(x, base_pair, merged_pair) -> float:
    """How far two fp32 computations of the same linear layer on ``x`` [B, rows, n] may differ: the
    Shot LoRA's (base layer, then the low-rank delta added) and the merged weight's.

    Each output is a sum of n products; whatever the order a kernel sums in (MKL, oneDNN and their
    AVX2 / AVX-512 paths block differently), its rounding error is at most about sqrt(n) * u *
    sum|x_i w_i| in the probabilistic analysis (Higham & Mary 2019, rounding errors independent; the
    worst case n * u is never approached), u = 2^-24 fp32's unit roundoff. Both sides round, so the
    sums of magnitudes of both count; taken at their largest over the checked rows. Measured on a
    2-core AVX-512 CPU: at most 1.9 u * that magnitude (n = 256 and 512), 0.4 (n = 4096), so even the
    smallest factor, sqrt(256) = 16, leaves 8x for other kernels."""
    u = torch.finfo(torch.float32).eps / 2
    ax = x.abs().double()
    magnitude = sum(ax @ w.abs().double().t() + b.abs().double() for w, b in (base_pair, merged_pair))
    return x.shape[-1] ** 0.5 * u * float(magnitude.max())


def check_layers(calls, base, groups, min_change=1e-3):
    """Every recorded call: rows in no group equal ``base`` exactly; rows of each group (image spans,
    text spans, merged weights) equal the merged layer within fp32 rounding (rounding_bound), and
    differ from base by more than ``min_change`` and 100x that bound (the test could fail). Returns the
    largest scoped-row error as a fraction of its bound."""
    import dreamshot.shot_lora as pure

    worst = 0.0
    for layer, x, out in calls:
        w, b = base[layer]
        ref = F.linear(x, w, b)
        covered = torch.zeros(x.shape[1], dtype=torch.bool)
        for image_spans, text_spans, merged in groups:
            spans = image_spans if pure.row_kind(layer) == pure.IMAGE_ROWS else text_spans
            mask = rows_mask(x.shape[1], spans)
            if not mask.any():
                continue
            want = F.linear(x[:, mask], *merged[layer])
            err = float((out[:, mask] - want).abs().max())
            tol = rounding_bound(x[:, mask], (w, b), merged[layer])
            assert err <= tol, f"{layer}: scoped rows differ from the merged LoRA by {err} (fp32 rounding: {tol})"
            change = float((want - ref[:, mask]).abs().max())
            assert change > max(min_change, 100 * tol), f"{layer}: the LoRA changes nothing here ({change})"
            worst = max(worst, err / tol)
            covered |= mask
        assert torch.equal(out[:, ~covered], ref[:, ~covered]), f"{layer}: an unscoped row changed"
    return worst


@pytest.fixture(autouse=True)
def unpatched(comfy_headless):
    """Unload every model first: ComfyUI leaves the last sampled clone's weight patches merged in
    place until it loads another clone, and base_weights must read the unpatched weights."""
    import comfy.model_management

    comfy.model_management.unload_all_models()


def base_weights(model):
    sd = model.model.diffusion_model.state_dict()
    return {layer: (sd[f"{layer}.weight"].detach().clone(), sd[f"{layer}.bias"].detach().clone()) for layer in LAYERS}


def shot_spans(seq, shots, refs=()):
    """Token spans and prompt-segment row spans of pass shots ``shots`` and reference frames ``refs``."""
    lay, seg = seq.layout, seq.segment_length
    image = [lay.shot_token_span(i) for i in shots] + [lay.ref_token_span(r) for r in refs]
    text = [(i * seg, (i + 1) * seg) for i in shots]
    return image, text


# -- tests ---------------------------------------------------------------------------------------------
SHOTS_3 = [("Mira", "Theo"), ("Mira",), ("Theo",)]


def test_shot_lora_changes_only_its_shots_rows_and_copies_no_weight(N, pack_module, tiny_wan_model, lora_dirs):
    loras, _ = lora_dirs
    path = write_lora(loras / "style_a.safetensors", tiny_wan_model)
    seq = make_story(pack_module, SHOTS_3)
    module = tiny_wan_model.model.diffusion_model.blocks[0].self_attn.q
    ptr, options, objects = module.weight.data_ptr(), repr(tiny_wan_model.model_options), \
        dict(tiny_wan_model.object_patches)
    base = base_weights(tiny_wan_model)

    (patched,) = N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="style_a.safetensors", strength=0.7, shots="2")
    (spec,) = patched.model_options["dreamshot_shot_loras"]
    assert patched.clone().model_options["dreamshot_shot_loras"][0] is spec     # clones share, never copy, it
    assert not patched.patches                                                  # no weight patch at all
    (calls,) = run(pack_module, patched, seq, tiny_wan_model)
    assert {layer for layer, _, _ in calls} == set(LAYERS)
    assert {x.shape[0] for _, x, _ in calls} == {2}                             # cond and uncond batched
    image, text = shot_spans(seq, [1])
    check_layers(calls, base, [(image, text, merged_weights(tiny_wan_model, base, [(path, 0.7)]))])

    # no second copy and nothing merged: same storage, same values, nothing in ComfyUI's backup
    assert module.weight.data_ptr() == ptr and torch.equal(module.weight, base["blocks.0.self_attn.q"][0])
    assert not {k for k in tiny_wan_model.backup if any(layer in k for layer in LAYERS)}
    # the input model is untouched
    assert repr(tiny_wan_model.model_options) == options and tiny_wan_model.object_patches == objects
    assert not tiny_wan_model.patches


def test_two_loras_and_a_character_bound_lora_with_its_references(N, pack_module, tiny_wan_model, lora_dirs):
    loras, _ = lora_dirs
    a = write_lora(loras / "a.safetensors", tiny_wan_model, seed=1)
    b = write_lora(loras / "b.safetensors", tiny_wan_model, seed=2, bias_layers=("blocks.1.cross_attn.o",))
    seq = make_story(pack_module, SHOTS_3)
    base = base_weights(tiny_wan_model)
    (m,) = N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="a.safetensors", strength=0.8, shots="1-2")
    (m,) = N.DreamShotShotLoRA(model=m, lora_name="b.safetensors", strength=1.3, character="Theo",
                               include_references=True)
    (calls,) = run(pack_module, m, seq, tiny_wan_model)
    lay, seg = seq.layout, seq.segment_length
    theo_caption = seq.plan.prompts.index("a man in a red hat")
    # shot 1 lists Mira and Theo (A + B), shot 2 Mira (A), shot 3 Theo (B); Theo's reference (frame 1)
    # and caption take B; Mira's reference and caption take nothing
    only_a = shot_spans(seq, [1])
    only_b = ([lay.shot_token_span(2), lay.ref_token_span(1)],
              [(2 * seg, 3 * seg), (theo_caption * seg, (theo_caption + 1) * seg)])
    both = shot_spans(seq, [0])
    check_layers(calls, base, [
        (*only_a, merged_weights(tiny_wan_model, base, [(a, 0.8)])),
        (*only_b, merged_weights(tiny_wan_model, base, [(b, 1.3)])),
        (*both, merged_weights(tiny_wan_model, base, [(a, 0.8), (b, 1.3)])),
    ])


def test_chunks_scope_follows_the_shot_into_its_pass(N, pack_module, tiny_wan_model, lora_dirs):
    loras, _ = lora_dirs
    path = write_lora(loras / "c.safetensors", tiny_wan_model, seed=3)
    names = [("Mira",), ("Theo",), ("Mira",), ("Theo",), ("Mira",)]
    seq = make_story(pack_module, names)
    base = base_weights(tiny_wan_model)
    (m,) = N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="c.safetensors", strength=1.0, shots="3")
    subs = []
    sampling = pack_module("comfy_bridge.sampling")
    rec = Recorder(tiny_wan_model)
    try:
        with torch.inference_mode():
            sampling.sample_long_story(m, seq, 3, 1, 2.0, "euler", "simple", chunk_size=2, context_shots=1,
                                       on_chunk=lambda sub: (rec.new_pass(), subs.append(sub)))
    finally:
        rec.close()
    # passes: shots 1-2; shot 2 as context + 3-4; shot 4 as context + 5 (story shot 3 = index 2)
    assert [s.layout.num_shots for s in subs] == [2, 3, 2] and len(rec.passes) == 3
    merged = merged_weights(tiny_wan_model, base, [(path, 1.0)])
    check_layers(rec.passes[0], base, [])                               # shot 3 absent: exactly the base model
    assert subs[1].plan.shots[1].prompt.startswith("shot 3")           # pass 2's shot 1 is story shot 3
    check_layers(rec.passes[1], base, [(*shot_spans(subs[1], [1]), merged)])
    check_layers(rec.passes[2], base, [])


def test_with_lora_slot_racl_and_reference_cfg(N, pack_module, tiny_wan_model, lora_dirs):
    """Load DreamShot Model's merged LoRA (ComfyUI weight patches), the RACL patch and reference CFG (an
    extra pass with the shots blind to the references) together with a Shot LoRA on the same layers."""
    loras, slot_dir = lora_dirs
    slot = write_lora(slot_dir / "slot.safetensors", tiny_wan_model, layers=IMAGE_LAYERS[:7], seed=4, bias_layers=())
    shot = write_lora(loras / "d.safetensors", tiny_wan_model, seed=5)
    seq = make_story(pack_module, SHOTS_3)
    base = base_weights(tiny_wan_model)
    (m,) = N.LoadDreamShotModel(model=tiny_wan_model, lora_name="slot.safetensors", strength=1.0)
    (m,) = N.DreamShotRACLAttentionPatch(model=m, strength=1.0, start_percent=0.0, end_percent=1.0, layers="all",
                                         auto_regions=True)
    (m,) = N.DreamShotShotLoRA(model=m, lora_name="d.safetensors", strength=1.0, shots="3")
    calls = run(pack_module, m, seq, tiny_wan_model, ref_cfg=2.0)[0]
    assert {x.shape[0] for _, x, _ in calls} == {1, 2}                  # cond+uncond, and the refs-blind pass
    with_slot = merged_weights(tiny_wan_model, base, [(slot, 1.0)])   # "unpatched": the model with its slot LoRA
    both = merged_weights(tiny_wan_model, base, [(slot, 1.0), (shot, 1.0)])
    check_layers(calls, with_slot, [(*shot_spans(seq, [2]), both)])
    # ComfyUI merged the slot LoRA (and backs up those weights); the Shot LoRA's other layers are not backed up
    assert not {k for k in tiny_wan_model.backup if any(f"{layer}." in k for layer in LAYERS[7:])}


def test_lowvram_streamed_layers(N, pack_module, tiny_wan_model, lora_dirs, monkeypatch):
    """ComfyUI's lowvram path: no layer resident, weights cast at every forward and the slot LoRA applied
    on the fly by LowVramPatch (forced on the CPU by handing every load a weight budget of 0.1 bytes, what
    --novram gives; everything after that number is ComfyUI's own loading code)."""
    import comfy.model_management as mm

    loras, slot_dir = lora_dirs
    slot = write_lora(slot_dir / "slot_lv.safetensors", tiny_wan_model, layers=IMAGE_LAYERS[:7], seed=6, bias_layers=())
    shot = write_lora(loras / "lv.safetensors", tiny_wan_model, seed=7)
    seq = make_story(pack_module, SHOTS_3)
    base = base_weights(tiny_wan_model)
    (m,) = N.LoadDreamShotModel(model=tiny_wan_model, lora_name="slot_lv.safetensors", strength=1.0)
    (m,) = N.DreamShotShotLoRA(model=m, lora_name="lv.safetensors", strength=1.0, shots="1, 3")
    real = mm.LoadedModel.model_load
    monkeypatch.setattr(mm.LoadedModel, "model_load", lambda self, lowvram_model_memory=0, force_patch_weights=False:
                        real(self, 0.1, force_patch_weights=force_patch_weights))
    streamed = []
    q = tiny_wan_model.model.diffusion_model.blocks[0].self_attn.q
    handle = q.register_forward_hook(lambda mod, inp, out: streamed.append(
        (mod.comfy_cast_weights, [type(f).__name__ for f in mod.weight_function])))
    try:
        calls = run(pack_module, m, seq, tiny_wan_model)[0]
    finally:
        handle.remove()
        monkeypatch.undo()
        mm.unload_all_models()
    assert streamed and all(cast and fns == ["LowVramPatch"] for cast, fns in streamed)
    with_slot = merged_weights(tiny_wan_model, base, [(slot, 1.0)])
    both = merged_weights(tiny_wan_model, base, [(slot, 1.0), (shot, 1.0)])
    check_layers(calls, with_slot, [(*shot_spans(seq, [0, 2]), both)])
    assert not tiny_wan_model.backup                                    # nothing merged in place at all


@pytest.mark.parametrize("kwargs, needle", [
    (dict(shots="two"), r"input 'shots': 'two' is not a shot number"),
    (dict(shots=""), r"input 'shots': no shots and no character are given"),
    (dict(shots="1", include_references=True), r"input 'include_references': references belong to characters"),
])
def test_node_input_errors(N, tiny_wan_model, lora_dirs, kwargs, needle):
    write_lora(lora_dirs[0] / "e.safetensors", tiny_wan_model, layers=LAYERS[:1], bias_layers=())
    with pytest.raises(ValueError, match="Shot LoRA: " + needle):
        N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="e.safetensors", strength=1.0, **kwargs)


def test_loras_that_cannot_be_scoped_are_refused(N, tiny_wan_model, lora_dirs):
    sd = tiny_wan_model.model.diffusion_model.state_dict()
    norm = {"diffusion_model.blocks.0.norm3.diff": torch.zeros_like(sd["blocks.0.norm3.weight"])}
    write_lora(lora_dirs[0] / "norm.safetensors", tiny_wan_model, layers=LAYERS[:2], bias_layers=(), extra=norm)
    with pytest.raises(ValueError, match=r"Shot LoRA: input 'lora_name': norm.safetensors: 1 patch\(es\) cannot be "
                                         r"applied to chosen shots only: diffusion_model.blocks.0.norm3.weight"):
        N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="norm.safetensors", strength=1.0, shots="1")
    q_out = sd["blocks.0.self_attn.q.weight"].shape[0]
    dora = {"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(q_out, 1)}
    write_lora(lora_dirs[0] / "dora.safetensors", tiny_wan_model, layers=LAYERS[:1], bias_layers=(), extra=dora)
    with pytest.raises(ValueError, match=r"DoRA"):
        N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="dora.safetensors", strength=1.0, shots="1")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(shots="4"), r"input 'shots': f.safetensors: the story has 3 shot\(s\), got shot\(s\) \[4\]"),
    (dict(shots="", character="Ayla"), r"input 'character': f.safetensors: no shot of the story lists 'Ayla'"),
])
def test_scope_is_checked_against_the_story_when_sampling(N, pack_module, tiny_wan_model, lora_dirs, kwargs, needle):
    write_lora(lora_dirs[0] / "f.safetensors", tiny_wan_model, layers=LAYERS[:1], bias_layers=())
    (m,) = N.DreamShotShotLoRA(model=tiny_wan_model, lora_name="f.safetensors", strength=1.0, **kwargs)
    with pytest.raises(ValueError, match="Shot LoRA: " + needle):
        N.DreamShotSampler(model=m, sequence=make_story(pack_module, SHOTS_3), seed=0, steps=1, cfg=1.0,
                           sampler_name="euler", scheduler="simple")
