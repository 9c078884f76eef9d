"""Shared fixtures of the role-attention tests (tests/test_roles_*.py): seeded tensors, a two-character
story and queries/keys that read a chosen reference."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dreamshot.layout import StoryLayout
from dreamshot.roles import build_role_map


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def two_char_story(repeat=4, size=32):
    """2 refs (chars 0, 1) + 1 shot, 32x32 -> P = 4 tokens/frame; A on the left, B on the right."""
    lay = StoryLayout(num_refs=2, num_shots=1, width=size, height=size, repeat=repeat)
    rm = build_role_map(lay, shot_regions=[{0: (0.0, 0.0, 0.5, 1.0), 1: (0.5, 0.0, 1.0, 1.0)}])
    return lay, rm


def role_qk(lay, rm, swap, scale=10.0, noise=0.0):
    """2 heads of 4: keys of char c's ref along e_c in every head; queries of region c along e_c
    (along e_{1-c} when swapped)."""
    n, heads, d = lay.num_tokens, 2, 4
    q = noise * randn(1, n, heads * d, seed=4)
    k = noise * randn(1, n, heads * d, seed=5)
    for h in range(heads):
        for c, toks in enumerate(rm.ref_tokens):
            k[0, toks, h * d + c] += scale
        for r in rm.regions:
            q[0, r.tokens, h * d + ((1 - r.character) if swap else r.character)] += scale
    return q, k


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
