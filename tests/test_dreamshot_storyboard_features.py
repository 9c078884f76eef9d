"""Issue 14 pieces that need no model (pure torch): per-shot seeds and noise, the shot preview grid,
scene references in role attention and in the face metrics, reference-mask conventions, box checks,
edit mode encoding the earlier storyboard whole, per-shot negative prompts and variant rows on the
storyboard sheet. The ComfyUI side is in test_nodes_storyboard_features.py."""

import numpy as np
import pytest
import torch

from dreamshot.errors import DreamShotInputError
from dreamshot.eval.storyboard import StoryToMeasure, measure_story, people_only
from dreamshot.layout import StoryLayout
from dreamshot.mask_meaning import border_share, character_mask
from dreamshot.preview import grid_shape, shot_grid
from dreamshot.role_attention import BACKGROUND, UNCONSTRAINED, build_role_map
from dreamshot.scene_roles import location_backgrounds
from dreamshot.seeds import MAX_SEED, derived_shot_seed, shot_seeds, story_noise, variant_seed
from dreamshot.sheet import SheetStyle, render_sheet
from dreamshot.story import Character, Shot, encode_story, parse_boxes, plan_story
from test_dreamshot_story import ChunkVAE, _chars, _img


# -- seeds -------------------------------------------------------------------------------------
def test_shot_seeds_are_derived_per_shot_unless_given():
    seeds = shot_seeds([None, None, None], 42)
    assert seeds == [derived_shot_seed(42, j) for j in range(3)] and len(set(seeds)) == 3
    assert shot_seeds([None, 7, None], 42) == [seeds[0], 7, seeds[2]]
    assert shot_seeds([None] * 3, 43) != seeds                      # the sampler seed matters
    assert derived_shot_seed(42, 1) != derived_shot_seed(43, 0)      # mixed, not seed + shot
    assert variant_seed(MAX_SEED, 1) == 0 and variant_seed(5, 2) == 7
    assert all(0 <= s <= MAX_SEED for s in shot_seeds([None] * 4, MAX_SEED))


@pytest.mark.parametrize("repeat", [4, 8])
def test_story_noise_each_shot_from_its_own_seed(repeat):
    lay = StoryLayout(num_refs=2, num_shots=4, width=64, height=48, repeat=repeat)
    base = shot_seeds([None] * 4, 3)
    noise = story_noise(lay, base, 16)
    assert noise.shape == (1, 16, lay.num_latent_frames, 6, 8)
    assert torch.equal(noise[:, :, :2], torch.zeros(1, 16, 2, 6, 8))     # clean references: no noise
    rerolled = story_noise(lay, base[:2] + [99] + base[3:], 16)
    for j in range(4):
        frames = list(lay.shot_frames(j))
        same = torch.equal(noise[:, :, frames], rerolled[:, :, frames])
        assert same == (j != 2), j
    # A shot's noise does not depend on where it sits: the same seed in a 1-shot layout draws the same frames.
    alone = story_noise(StoryLayout(num_refs=0, num_shots=1, width=64, height=48, repeat=repeat), [base[3]], 16)
    assert torch.equal(alone, noise[:, :, list(lay.shot_frames(3))])


# -- preview -----------------------------------------------------------------------------------
def test_shot_grid_tiles_the_shots_not_the_references():
    lay = StoryLayout(num_refs=2, num_shots=3, width=64, height=48)
    latent = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(1, 4, 5, 6, 8)     # frame f holds the value f
    grid = shot_grid(latent, lay)
    assert grid_shape(3) == (2, 2) and grid.shape == (1, 4, 1, 12, 16)
    cells = grid[0, 0, 0].reshape(2, 6, 2, 8)[:, 0, :, 0]                    # one value per cell
    assert cells.tolist() == [[2.0, 3.0], [4.0, 0.0]]                        # shots 1-3, then an empty cell
    big = shot_grid(torch.randn(1, 16, 14, 90, 160), StoryLayout(num_refs=2, num_shots=12, width=1280, height=720))
    assert big.shape == (1, 16, 1, 108, 256)                                 # 4 x 3 cells, long side capped


# -- scene references in role attention ----------------------------------------------------------
def test_location_takes_the_background_of_its_shots():
    # cast: 0 Mira, 1 Theo (characters), 2 Harbour (location); one reference frame each, 64x64 = 16 tokens/frame
    lay = StoryLayout(num_refs=3, num_shots=3, width=64, height=64, ref_characters=(0, 1, 2))
    regions = [{0: (0, 0, 0.5, 0.5), 1: (0.5, 0, 1, 0.5)},     # boxes on the top half; location listed
               {0: (0, 0, 0.5, 1)},                             # location not listed
               {}]                                              # no regions: left to auto regions
    role_map = build_role_map(lay, None, regions)
    groups = role_map.group_of_query()
    casts = [(0, 1, 2), (0,), (0, 2)]
    kinds = ["character", "character", "location"]
    out = location_backgrounds(groups, role_map.shot_spans, casts, kinds, regions)
    a, b = role_map.shot_spans[0]
    shot0 = out[a:b].view(4, 4)
    assert (shot0[2:] == 3).all()                                            # bottom half: the harbour's role
    assert (shot0[:2, :2] == 1).all() and (shot0[:2, 2:] == 2).all()          # boxes unchanged
    a, b = role_map.shot_spans[1]
    assert torch.equal(out[a:b], groups[a:b]) and (groups[a:b] == BACKGROUND).any()   # no location listed
    a, b = role_map.shot_spans[2]
    assert (out[a:b] == UNCONSTRAINED).all()
    assert torch.equal(out[:lay.num_refs * 16], groups[:lay.num_refs * 16])
    # A location with a region of its own is a region like a character's; two locations: nothing to choose.
    assert torch.equal(location_backgrounds(groups, role_map.shot_spans, casts, kinds,
                                            [{**regions[0], 2: (0, 0.5, 1, 1)}, regions[1], {}]), groups)
    assert torch.equal(location_backgrounds(groups, role_map.shot_spans, [(0, 1, 2, 3)] + casts[1:],
                                            kinds + ["location"], regions), groups)


# -- face metrics skip scene references -------------------------------------------------------------
class OneFaceAnalyzer:
    """A face in every image except pure white ones (the location's reference)."""

    name = "one-face"

    def detect(self, image):
        from dreamshot.faces import Face

        if (image == 255).all():
            return []
        emb = np.zeros(4, np.float32)
        emb[int(image[0, 0, 0]) % 4] = 1
        return [Face(box=(0, 0, 8, 8), score=1.0, embedding=emb)]


def test_metrics_measure_people_only():
    def img(v):
        return np.full((16, 16, 3), v, np.uint8)
    story = StoryToMeasure("s", ("Mira", "Harbour", "Theo"), ((img(1),), (img(255),), (img(2),)), ("a", "b"),
                           ((0, 1), (1, 2)), shot_boxes=({0: (0, 0, 1, 1), 1: (0, 0, 1, 1)}, {}),
                           kinds=("character", "location", "character"))
    people = people_only(story)
    assert people.names == ("Mira", "Theo") and people.shot_characters == ((0,), (1,))
    assert people.shot_boxes == ({0: (0, 0, 1, 1)}, {})
    result = measure_story(story, [img(1), img(2)], OneFaceAnalyzer())   # the faceless location is not looked for
    assert [r.expected for r in result.shots] == [("Mira",), ("Theo",)]
    assert [r.found for r in result.shots] == [("Mira",), ("Theo",)]
    with pytest.raises(DreamShotInputError, match="no face found"):
        measure_story(StoryToMeasure(**{**story.__dict__, "kinds": ()}), [img(1), img(2)], OneFaceAnalyzer())


# -- masks, boxes, kinds -------------------------------------------------------------------------
def test_mask_meaning_auto_tells_a_cut_out_from_a_painted_mask():
    painted = torch.zeros(1, 32, 32)
    painted[:, 6:30, 8:24] = 1                       # the character, touching the bottom edge
    cut_out = 1 - painted                            # Load Image's MASK of a PNG with a transparent background
    assert border_share(painted) < 0.5 < border_share(cut_out)
    for mask in (painted, cut_out):
        fixed, _ = character_mask(mask, "auto")
        assert torch.equal(fixed, painted)
    assert torch.equal(character_mask(torch.zeros(1, 32, 32), "auto")[0], torch.ones(1, 32, 32))   # opaque image
    assert torch.equal(character_mask(painted, "1 = background")[0], cut_out)
    assert torch.equal(character_mask(cut_out, "1 = character")[0], cut_out)


@pytest.mark.parametrize("text, needle", [("Ayla: -0.5, 0, 2.5, 1", "starts outside the frame"),
                                          ("Ayla: 0, 0, nan, 1", "cannot read the box")])
def test_boxes_outside_the_frame_are_refused_when_read(text, needle):
    with pytest.raises(DreamShotInputError, match=needle):
        parse_boxes(text)


@pytest.mark.parametrize("box, needle", [((0, 0, 80, 64), "reaches outside the 64x64 frame"),
                                         ((0.5, 0, 1.5, 1), "narrower than one 16-pixel token")])
def test_boxes_outside_the_frame_are_refused_when_planned(box, needle):
    shot = Shot("a", ("Alice",), regions=(("Alice", box),))
    with pytest.raises(DreamShotInputError, match=needle + ".*refused, not clipped"):
        plan_story(_chars("Alice"), [shot], 64, 64)
    ok = Shot("a", ("Alice",), regions=(("Alice", (0, 0, 0.5, 1)),))
    assert plan_story(_chars("Alice"), [ok], 64, 64).shot_regions == [{0: (0, 0, 0.5, 1)}]


def test_unknown_kind_is_refused():
    with pytest.raises(DreamShotInputError, match="unknown kind 'castle'"):
        plan_story([Character("Keep", _img(0.1).unsqueeze(0), kind="castle")], [Shot("a", ("Keep",))], 64, 64)


# -- edit mode: the earlier storyboard encoded whole -------------------------------------------------
class CausalVAE(ChunkVAE):
    """ChunkVAE whose latent frame f also carries half of frame f-1, as Wan's causal VAE carries earlier frames."""

    def encode(self, pixels):
        lat = super().encode(pixels).clone()
        for f in range(1, lat.shape[2]):
            lat[:, :, f] += 0.5 * lat[:, :, f - 1]
        return lat


def test_edit_with_keyframes_encodes_the_earlier_storyboard_whole():
    """The kept shot after a regenerated one gets the latent it has in the whole earlier storyboard,
    not the one it gets after a grey placeholder (the VAE is causal in time)."""
    before = torch.stack([_img(0.2), _img(0.9), _img(0.4)])
    vae = CausalVAE()
    plan = plan_story([], [Shot("a"), Shot("b"), Shot("c")], 64, 64, mode="edit", keyframes=before,
                      lock_shots=[0, 2])
    assert plan.shot_images[1] is None and torch.equal(plan.images_to_encode()[1], before[1])
    seq = encode_story(plan, vae, lambda t: torch.ones(1, 2, 4))
    whole = vae.encode(torch.cat([before[:1], before[1:2].expand(4, -1, -1, -1), before[2:].expand(4, -1, -1, -1)]))
    assert torch.equal(seq.latent, whole)
    grey = plan_story([], [Shot("a", image=before[0]), Shot("b"), Shot("c", image=before[2])], 64, 64, mode="edit")
    assert grey.encode_images is None                           # no earlier storyboard: grey, as before
    assert not torch.equal(encode_story(grey, vae, lambda t: torch.ones(1, 2, 4)).latent[:, :, 2], whole[:, :, 2])


# -- per-shot negative prompts --------------------------------------------------------------------------
def test_each_shot_reads_its_own_negative_prompt():
    plan = plan_story(_chars("Alice"), [Shot("a"), Shot("b", negative_prompt="no hats"), Shot("c")], 64, 64)
    seq = encode_story(plan, ChunkVAE(), lambda text: torch.full((1, 2, 4), float(len(text))), negative_prompt="neg")
    L = seq.segment_length
    firsts = [seq.negative[0, j * L, 0].item() for j in range(4)]
    assert firsts == [3.0, float(len("no hats")), 3.0, float(len("Alice desc"))]


# -- the storyboard sheet with variants ------------------------------------------------------------------
def test_sheet_lays_variants_out_as_rows():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 48, 96, 3, generator=g)           # 2 variants x 3 shots
    style = SheetStyle(cell_width=96, margin=10, gutter=6, font_size=12, font="default")
    out = render_sheet(images, ["one", "two", "three"], None, title="", style=style, variants=2)
    single = render_sheet(images[:3], ["one", "two", "three"], None, title="", style=style)
    px = torch.from_numpy(np.array(out)).float() / 255
    label_w = out.width - (2 * 10 + 3 * 96 + 2 * 6)
    assert label_w > 0 and out.height > 2 * 48 and out.height < 2 * single.height
    for v in range(2):
        for j in range(3):
            x, y = 10 + label_w + j * (96 + 6), 10 + v * (48 + 6)
            cell = px[y + 24:y + 48, x:x + 96]
            assert (cell - images[v * 3 + j][24:]).abs().max() <= 0.5 / 255 + 1e-6, (v, j)
    with pytest.raises(DreamShotInputError, match="do not split into 4 variants"):
        render_sheet(images, style=style, variants=4)
    with pytest.raises(DreamShotInputError, match="2 captions for 3 shots"):
        render_sheet(images, ["a", "b"], style=style, variants=2)


def test_benchmark_characters_take_a_kind(tmp_path):
    import json

    from dreamshot.eval.benchmark import read_benchmark

    bench = {"stories": [{"id": "01", "characters": {
        "mira": {"reference": "m.png"}, "pier": {"reference": "p.png", "kind": "location"}},
        "shots": [{"prompt": "Mira on the pier", "characters": ["mira", "pier"]}]}]}
    (tmp_path / "b.json").write_text(json.dumps(bench))
    read = read_benchmark(tmp_path / "b.json", check_files=False)
    assert [c.kind for c in read.stories[0].characters] == ["character", "location"]
    bench["stories"][0]["characters"]["pier"]["kind"] = "castle"
    (tmp_path / "b.json").write_text(json.dumps(bench))
    with pytest.raises(DreamShotInputError, match=r"stories\[0\].characters.pier.kind: expected one of"):
        read_benchmark(tmp_path / "b.json", check_files=False)
