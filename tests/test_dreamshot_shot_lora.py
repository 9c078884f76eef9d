"""Per-shot LoRA, the pure parts: shot numbers, scope, the rows of a pass, the on-the-fly delta."""

import copy

import pytest
import torch

from dreamshot.errors import DreamShotInputError
from dreamshot.shot_lora import (IMAGE_ROWS, TEXT_ROWS, LowRankDelta, ShotLoRA, add_scoped_delta, parse_shot_numbers,
                                 pass_rows, row_kind, story_scope)
from dreamshot.story import Character, Shot, plan_story


def test_parse_shot_numbers():
    assert parse_shot_numbers(" 2, 4-5;1 ") == (0, 1, 3, 4)
    assert parse_shot_numbers("5-4") == (3, 4)
    assert parse_shot_numbers("") is None and parse_shot_numbers("All") is None
    for bad in ("two", "0", "1-x"):
        with pytest.raises(DreamShotInputError, match="Shot LoRA: input 'shots'"):
            parse_shot_numbers(bad)


def test_row_kind_of_wan_layers():
    assert row_kind("diffusion_model.blocks.3.self_attn.o") == IMAGE_ROWS
    assert row_kind("blocks.0.cross_attn.q") == IMAGE_ROWS and row_kind("blocks.0.ffn.2") == IMAGE_ROWS
    assert row_kind("diffusion_model.head.head") == IMAGE_ROWS
    assert row_kind("blocks.0.cross_attn.k") == TEXT_ROWS and row_kind("diffusion_model.text_embedding.2") == TEXT_ROWS
    for other in ("blocks.0.norm3", "time_embedding.0", "time_projection.1", "patch_embedding", "blocks.0.modulation",
                  "blocks.0.self_attn.norm_q", "blocks.10.ffn.1"):
        assert row_kind(other) is None, other


SHOT_NAMES = [("Mira", "Theo"), ("Mira",), ("Theo",), ()]


def _lora(**kw):
    return ShotLoRA(name="x.safetensors", strength=1.0, deltas={}, **kw)


def test_scope_shots_character_and_both():
    assert story_scope(_lora(shots=(1, 3)), SHOT_NAMES) == {1, 3}
    assert story_scope(_lora(), SHOT_NAMES) == {0, 1, 2, 3}
    assert story_scope(_lora(character="Theo"), SHOT_NAMES) == {0, 2}
    assert story_scope(_lora(shots=(0, 1), character="Theo"), SHOT_NAMES) == {0}


@pytest.mark.parametrize("kw, needle", [
    (dict(shots=(4,)), r"input 'shots': x.safetensors: the story has 4 shot\(s\), got shot\(s\) \[5\]"),
    (dict(character="Ayla"), r"input 'character': x.safetensors: no shot of the story lists 'Ayla'"),
    (dict(shots=(1, 3), character="Theo"),
     r"input 'shots': .*none of shots 2, 4 lists 'Theo' \(shots listing it: 1, 3\)"),
])
def test_scope_refusals(kw, needle):
    with pytest.raises(DreamShotInputError, match="Shot LoRA: " + needle):
        story_scope(_lora(**kw), SHOT_NAMES)


def test_spec_is_not_copied_with_model_options():
    spec = _lora(shots=(0,))
    assert copy.deepcopy({"loras": (spec,)})["loras"][0] is spec


def _plan():
    img = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    chars = [Character("Mira", img, description="green coat"), Character("Theo", img, description="red hat")]
    shots = [Shot(f"shot {j}", names) for j, names in enumerate(SHOT_NAMES)]
    return plan_story(chars, shots, 64, 64)   # refs: Mira (frame 0), Theo (frame 1); shots: frames 2..5


def test_pass_rows_whole_story_and_a_chunk():
    plan = _plan()
    p, seg = plan.layout.tokens_per_frame, 7
    assert plan.frame_segments == [4, 5, 0, 1, 2, 3]           # captions are segments 4 (Mira), 5 (Theo)
    theo = _lora(character="Theo", include_references=True)
    rows = pass_rows(theo, story_scope(theo, SHOT_NAMES), plan, range(4), seg)
    assert rows[IMAGE_ROWS] == ((p, 3 * p), (4 * p, 5 * p))    # Theo's reference + shot 1 (adjacent: merged), shot 3
    assert rows[TEXT_ROWS] == ((0, seg), (2 * seg, 3 * seg), (5 * seg, 6 * seg))
    no_refs = _lora(character="Theo")
    assert pass_rows(no_refs, story_scope(no_refs, SHOT_NAMES), plan, range(4), seg)[IMAGE_ROWS] == \
        ((2 * p, 3 * p), (4 * p, 5 * p))
    # a pass holding story shots 2 and 3 as its shots 0 and 1: the LoRA on story shot 3 follows it
    chunk = plan_story(plan.characters, [plan.shots[1], plan.shots[2]], 64, 64)
    lora = _lora(shots=(2,))
    rows = pass_rows(lora, story_scope(lora, SHOT_NAMES), chunk, (1, 2), seg)
    assert rows[IMAGE_ROWS] == (chunk.layout.shot_token_span(1),) and rows[TEXT_ROWS] == ((seg, 2 * seg),)
    assert pass_rows(_lora(shots=(3,)), frozenset({3}), chunk, (1, 2), seg) == {IMAGE_ROWS: (), TEXT_ROWS: ()}


def test_scoped_delta_is_the_merged_weight_on_its_rows_and_nothing_elsewhere():
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    up, down, bias = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, generator=g)
    x = torch.randn(2, 9, 5, generator=g)
    delta = LowRankDelta(up, down, scale=0.5, bias=bias)
    out = add_scoped_delta(torch.nn.functional.linear(x, w, b), x, [(1, 3), (7, 9)], delta, strength=0.8)
    base = torch.nn.functional.linear(x, w, b)
    merged = torch.nn.functional.linear(x, w + 0.8 * 0.5 * up @ down, b + 0.8 * bias)
    inside = torch.zeros(9, dtype=torch.bool)
    inside[1:3] = inside[7:9] = True
    assert torch.equal(out[:, ~inside], base[:, ~inside])
    torch.testing.assert_close(out[:, inside], merged[:, inside], rtol=0, atol=1e-5)
