"""Every DreamShot attention op against the plain attention call it replaces, at Wan model sizes.

One transformer block's attention at the real width, head count, batch and dtype (bf16): q, k, v of
[2, N, dim] for a story of 3 characters (one reference frame each) and 6 shots, 9 latent frames.
``frame`` may shrink the frame (CPU: full 720p self-attention costs minutes per call there); every
op's memory is linear in tokens, so the ratios hold at full size (tests/test_dreamshot_memory.py
checks that they do not grow with the token count).

Extra memory is the peak the call allocates above what existed before it (measure.peak_bytes):
the plain call's is essentially its output, as large as q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attention import RepeatedKeys, per_shot_cross_attention, sdpa_attention
from ..guidance import self_attention_without_refs
from ..layout import WAN21, Geometry, StoryLayout
from ..roles import auto_regions, build_role_map, racl_loss, role_masked_self_attention
from .measure import Measurement, ShapeOnly, measure, peak_bytes, profile_cpu, sdpa_kernels


@dataclass(frozen=True)
class ModelSize:
    name: str
    dim: int
    heads: int
    blocks: int
    width: int
    height: int
    geometry: Geometry = WAN21

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


# Wan2.2-TI2V-5B's latent (what ComfyUI reads from its VAE and DiT, comfy_bridge.geometry; checked against
# ComfyUI's own objects by tests/test_wan22.py): 48 channels, 16x space, 4x time, patch (1, 2, 2); the DiT
# is the official configs/wan_ti2v_5B.py's (dim 3072, 24 heads, 30 layers). Its 720p is 1280x704.
WAN22_5B_GEOMETRY = Geometry(latent_channels=48, spatial=16, temporal=4, patch=(1, 2, 2), name="Wan2.2")
MODEL_SIZES = {
    "14B": ModelSize("14B", dim=5120, heads=40, blocks=40, width=1280, height=720),
    "1.3B": ModelSize("1.3B", dim=1536, heads=12, blocks=30, width=832, height=480),
    "5B": ModelSize("5B", dim=3072, heads=24, blocks=30, width=1280, height=704, geometry=WAN22_5B_GEOMETRY),
}
# The reference story: 3 characters with one reference frame each, 6 shots of one latent frame
# (9 latent frames = 32,400 tokens at 1280x720), each shot listing all three characters (so auto
# regions compare three); CFG batch 2 (positive, negative).
REFS, SHOTS, BATCH = 3, 6, 2
UNFOLDED_TEXT = 512  # UMT5 rows per prompt, zero-padded: the stock cross-attention's context
FOLDED_TEXT = 61     # rows per folded shot segment (dreamshot.text_fold): <= 60 real rows + 1 zero row
# Shot regions for role-masked attention: three vertical bands, the last 10 % of columns background.
BANDS = [(0.0, 0.0, 0.3, 1.0), (0.3, 0.0, 0.6, 1.0), (0.6, 0.0, 0.9, 1.0)]


def frame_size(size: ModelSize, scale: int = 1) -> tuple[int, int]:
    """The model's frame with each side divided by ``scale`` (multiples of its token side: 16, 5B: 32)."""
    multiple = size.geometry.pixel_multiple

    def side(v):
        return max(multiple, v // scale // multiple * multiple)
    return side(size.width), side(size.height)


def _cases(size: ModelSize, width: int, height: int, device, dtype, values: bool = True):
    """The plain calls {name: fn} and the ops [(name, plain call's name, fn)] of one block's attention.
    ``values`` False: the activations are left uninitialised (shape accounting, measure.ShapeOnly)."""
    lay = StoryLayout(num_refs=REFS, num_shots=SHOTS, width=width, height=height, geometry=size.geometry)
    n, inner, heads, p = lay.num_tokens, size.dim, size.heads, lay.tokens_per_frame
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        if not values:
            return torch.empty(*shape, device=device, dtype=dtype)
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    q, k, v = rand(BATCH, n, inner), rand(BATCH, n, inner), rand(BATCH, n, inner)
    text_k, text_v = rand(BATCH, UNFOLDED_TEXT, inner), rand(BATCH, UNFOLDED_TEXT, inner)
    # Folded story text: a segment per shot (and per reference caption in the captioned case), its last
    # row standing for UMT5's zero padding (z rows): as the sampler runs it, repeated keys (the row z times,
    # unmasked through the backend); the key bias ln(z) is the masked form of the same.
    segs = SHOTS + REFS

    def folded(n_segments):   # context K, V and their repeated keys as the hook gets them (contiguous)
        z = UNFOLDED_TEXT - FOLDED_TEXT + 1
        repeated = RepeatedKeys(torch.full((BATCH, n_segments), float(z - 1), device=device),
                                torch.full((BATCH, n_segments), FOLDED_TEXT - 1, device=device))
        return (rand(BATCH, n_segments * FOLDED_TEXT, inner), rand(BATCH, n_segments * FOLDED_TEXT, inner),
                repeated)

    shot_text, all_text = folded(SHOTS), folded(segs)
    uncaptioned = [-1] * REFS + list(range(SHOTS))
    captioned = list(range(SHOTS, segs)) + list(range(SHOTS))

    rm = build_role_map(lay, shot_regions=[dict(enumerate(BANDS))] * SHOTS)
    groups = rm.group_of_query().to(device)
    refs = [t.to(device) for t in rm.ref_hard_tokens]
    shot_tokens = [torch.arange(*span) for span in rm.shot_spans]
    casts = [tuple(range(REFS))] * SHOTS
    positive = slice(0, BATCH // 2)

    # The regions auto regions decide depend on the values, which shape accounting leaves uncomputed,
    # and the role-masked call's memory depends on how scattered its groups are (a run of tokens is a
    # view, scattered ones are gathered): the patch case masks with the most scattered partition, the
    # three characters interleaved token by token (every slice gathered: the worst case), whatever
    # auto regions returned, so a real run and the accounting measure the same thing.
    worst = torch.full((n,), -1, dtype=torch.long, device=device)
    for a, b in rm.shot_spans:
        worst[a:b] = torch.arange(b - a, device=device) % REFS + 1

    def racl_hook():  # what the RACL Attention Patch runs in a block: auto regions, then role-masked
        decided = auto_regions(q, k, heads, shot_tokens, casts, refs, batch=positive)
        del decided
        return role_masked_self_attention(q, k, v, heads, worst, refs, 1.0)

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    grad_out = rand(BATCH, n, inner)

    def drop_grads():  # after the call: the next one allocates its gradients again, as this one did
        for t in (qg, kg, vg):
            t.grad = None

    def plain_train():
        sdpa_attention(qg, kg, vg, heads).backward(grad_out)
        drop_grads()

    def racl_train():
        racl_loss(qg, kg, heads, rm).backward()
        drop_grads()

    plain = {
        "cross": lambda: sdpa_attention(q, text_k, text_v, heads),
        "self": lambda: sdpa_attention(q, k, v, heads),
        "self, forward + backward": plain_train,
    }
    ops = [
        ("per-shot cross-attention, folded text, uncaptioned refs", "cross",
         lambda: per_shot_cross_attention(q, *shot_text[:2], heads, uncaptioned, p, SHOTS, repeated=shot_text[2])),
        ("per-shot cross-attention, folded text, captioned refs", "cross",
         lambda: per_shot_cross_attention(q, *all_text[:2], heads, captioned, p, segs, repeated=all_text[2])),
        ("role-masked self-attention (regions given)", "self",
         lambda: role_masked_self_attention(q, k, v, heads, groups, refs, 1.0)),
        ("auto regions (3-character casts)", "self",
         lambda: auto_regions(q, k, heads, shot_tokens, casts, refs, batch=positive)),
        ("RACL patch: auto regions + role-masked", "self", racl_hook),
        ("reference-CFG pass (shots blind to refs)", "self",
         lambda: self_attention_without_refs(q, k, v, heads, REFS * p, sdpa_attention)),
        ("RACL loss (training), forward + backward", "self, forward + backward", racl_train),
    ]
    return lay, plain, ops


def bench_ops(size: ModelSize, device: torch.device, dtype: torch.dtype = torch.bfloat16,
              frame: tuple[int, int] | None = None, repeats: int = 3, warmup: int = 1,
              shape_only: bool = False) -> list[dict]:
    """One row per op: extra memory and time against its plain call, and the SDPA kernels it ran.

    ``shape_only``: memory by shape accounting (measure.ShapeOnly: every allocation made, no float
    math), which runs full-size models on a CPU in seconds; no times then (NaN).
    """
    width, height = frame or (size.width, size.height)
    lay, plain, ops = _cases(size, width, height, device, dtype, values=not shape_only)

    def run(fn):
        if not shape_only:
            return measure(fn, device, repeats, warmup, kernels=True)
        with ShapeOnly():
            fn()   # first call: lazy one-time allocations stay out of the measured one
            if device.type == "cuda":
                return Measurement(math.nan, peak_bytes(fn, device), sdpa_kernels(fn))
            return profile_cpu(fn)

    base = {name: run(fn) for name, fn in plain.items()}
    rows = []
    for name, ref, fn in ops:
        m = run(fn)
        b = base[ref]
        rows.append({"model": size.name, "frame": f"{width}x{height}", "tokens": lay.num_tokens, "op": name,
                     "plain": ref, "extra_mib": m.peak_bytes / 2 ** 20, "plain_mib": b.peak_bytes / 2 ** 20,
                     # CPU: the peak without kernel-internal allocations, and the kernels' own (measure.py)
                     "ops_mib": m.ops_peak_bytes / 2 ** 20, "plain_ops_mib": b.ops_peak_bytes / 2 ** 20,
                     "workspace_mib": m.kernel_workspace_bytes / 2 ** 20,
                     "plain_workspace_mib": b.kernel_workspace_bytes / 2 ** 20,
                     "mem_ratio": m.peak_bytes / b.peak_bytes, "time_ratio": m.seconds / b.seconds,
                     "kernels": ", ".join(m.kernels) or "-", "plain_kernels": ", ".join(b.kernels) or "-"})
    return rows
