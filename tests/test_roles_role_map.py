"""Role map: pixel masks and boxes onto the token grid, reference tokens, shot regions and groups."""

import pytest
import torch

from dreamshot.errors import DreamShotInputError
from dreamshot.layout import StoryLayout
from dreamshot.roles import (box_to_mask, build_role_map, pixel_mask_to_tokens)


def test_half_image_mask_downsamples_to_half_the_tokens():
    mask = torch.zeros(64, 128)
    mask[:, :64] = 1.0  # left half
    tok = pixel_mask_to_tokens(mask)
    assert tok.shape == (4 * 8,)
    grid = tok.view(4, 8)  # row-major: h then w
    assert torch.equal(grid[:, :4], torch.ones(4, 4)) and torch.equal(grid[:, 4:], torch.zeros(4, 4))
    soft = torch.zeros(2, 32, 32)
    soft[1, :, :8] = 1.0  # edge in the middle of token column 0
    out = pixel_mask_to_tokens(soft)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out[1], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert torch.count_nonzero(out[0]) == 0
    with pytest.raises(ValueError):
        pixel_mask_to_tokens(mask * 2)


def test_box_to_mask_pixels_normalized_and_partial_coverage():
    px = box_to_mask((0, 0, 16, 32), width=32, height=32)
    assert torch.equal(px, box_to_mask((0.0, 0.0, 0.5, 1.0), width=32, height=32))
    assert px.sum() == 16 * 32
    part = box_to_mask((1.5, 0, 3, 1), width=4, height=2)
    torch.testing.assert_close(part, torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        box_to_mask((5, 5, 5, 9), 16, 16)


def test_build_role_map_tokens_weights_and_groups():
    # 3 refs (char 0, char 1, char 0 again), 2 shots of 2 latent frames, 32x32 -> P = 4
    lay = StoryLayout(num_refs=3, num_shots=2, width=32, height=32, repeat=8, ref_characters=(0, 1, 0))
    ref_mask = torch.zeros(32, 32)
    ref_mask[:16] = 1.0  # top half of ref 1
    ref_mask[16:, :4] = 1.0  # a sliver: weight 0.25 in token 2
    right = torch.zeros(32, 32)
    right[:, 16:] = 1.0
    rm = build_role_map(lay, ref_masks=[None, ref_mask, None], shot_regions=[None, {1: right, 0: (0, 0, 16, 32)}])
    assert rm.num_characters == 2 and rm.num_tokens == (3 + 4) * 4
    assert rm.ref_tokens[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert torch.equal(rm.ref_weights[0], torch.ones(8))
    assert rm.ref_tokens[1].tolist() == [4, 5, 6]
    torch.testing.assert_close(rm.ref_weights[1], torch.tensor([1.0, 1.0, 0.25]))
    assert rm.ref_hard_tokens[1].tolist() == [4, 5]  # soft sliver kept for the loss only
    # shot 1 = latent frames 5, 6 -> tokens 20..27; the region repeats on both frames
    by_char = {r.character: r for r in rm.regions}
    assert by_char[0].tokens.tolist() == [20, 22, 24, 26] and by_char[1].tokens.tolist() == [21, 23, 25, 27]
    groups = rm.group_of_query()
    assert groups[:20].tolist() == [-1] * 20  # refs and the region-less shot 0
    assert groups[20:].tolist() == [1, 2] * 4
    assert rm.unregioned_shots() == [0]
    with pytest.raises(DreamShotInputError):
        build_role_map(lay, shot_regions=[{5: right}, None])


def test_overlapping_regions_go_to_the_higher_weight_and_background_is_zero():
    lay = StoryLayout(num_refs=2, num_shots=1, width=64, height=32)  # grid 2 x 4
    a = box_to_mask((0, 0, 40, 32), 64, 32)  # token column 2 covered 0.5 by A
    b = box_to_mask((36, 0, 48, 32), 64, 32)  # token column 2 covered 0.75 by B
    groups = build_role_map(lay, shot_regions=[{0: a, 1: b}]).group_of_query()
    assert groups[16:].view(2, 4).tolist() == [[1, 1, 2, 0], [1, 1, 2, 0]]
