"""Property-based tests of the whole story path (issue 18): generated stories and settings, run
through the nodes inside the real ComfyUI (Character Reference / Shot Script chains, Shot Sequence
Pack, RACL Attention Patch, DreamShot Sampler, Storyboard Sheet; support/story_fuzz.py).

Every story either works or is refused with a DreamShotInputError naming the node, the right input
(support.story_fuzz.problems, written from what the README promises) and a fix. On success: one
keyframe per shot, finite, in 0..1; given and locked shots byte-identical; no reference among the
keyframes; the same seed gives the same keyframes; a chunked run and a one-pass run keep and
generate the same shots; the RACL patch at strength 0 equals no patch.

Two streams (docs/fuzzing.md): valid stories, built valid by construction (the oracle finds no
problem in them), must run and keep every invariant; invalid stories, a valid one with one or two
known faults put in, must be refused naming an input the oracle lists. Each example has a deadline
(hypothesis) and a wall guard (support/guards.py): a slow example or a hang fails.

Profiles (support/fuzz_profiles.py): "ci" (default) runs a bounded number of examples from a fixed
seed; DREAMSHOT_FUZZ=nightly runs many more. Failing examples are kept in ~/.cache/dreamshot-hypothesis
($DREAMSHOT_HYPOTHESIS_DB) and replayed first; every shrunk failure found so far is an ordinary test
in tests/test_story_regressions.py.
"""

from __future__ import annotations

import datetime

import pytest
import torch
from hypothesis import event, given, note, seed, settings
from hypothesis import strategies as st
from support.fuzz_profiles import examples
from support.guards import hang_guard

from support.story_fuzz import (
    PACK, RACL, SAMPLER, CharSpec, RaclSpec, ShotSpec, StorySpec, given_shots, pass_frames, problems, run_story,
    sample, story_inputs,
)

pytestmark = pytest.mark.comfyui

FUZZ_SEED = 18
# Per example. The slowest measured (an RACL pair of runs, 7 shots, 2 steps) took 34 s on a 2-core
# machine at load ~8-11 (the nightly run of docs/fuzzing.md; median 2 s); the deadline is 3.5x that. The hang guard (it interrupts an
# example that never ends): 10 min of CPU time (all threads) or 30 min of wall time.
DEADLINE = datetime.timedelta(seconds=120)
EXAMPLE_GUARD_S = (600, 1800)


NAMES = ("Ann", "Ben", "Cid")
PROMPTS = ("a walk", "rain at night", "two friends talk", "close-up", "a wide street")
DESCRIPTIONS = ("", "", "a tall man", "a girl in red")
SIZES = (16, 32, 48)
MODES = ("reference_to_shot", "text_to_shot", "shot_to_shot", "edit")


@st.composite
def boxes(draw, names: tuple[str, ...], width: int, height: int) -> str:
    parts = []
    for name in names:
        if draw(st.booleans()):
            continue
        if draw(st.booleans()):   # fractions
            x0, y0 = draw(st.sampled_from((0.0, 0.25, 0.5))), draw(st.sampled_from((0.0, 0.5)))
            parts.append(f"{name}: {x0}, {y0}, {x0 + 0.5}, {y0 + 0.5}")
        else:                     # pixels
            x1 = draw(st.sampled_from(tuple(range(16, width + 1, 16))))
            y1 = draw(st.sampled_from(tuple(range(16, height + 1, 16))))
            parts.append(f"{name}: 0, 0, {x1}, {y1}")
    return "; ".join(parts)


@st.composite
def valid_stories(draw, chunked: bool = False, racl: bool | None = None) -> StorySpec:
    """A story the oracle finds nothing wrong with, by construction: the mode gets the given shots it
    needs (a prefix for shot_to_shot, some but not all for edit, none otherwise), reference_to_shot a
    cast, fit "error" references of the shot size, locks only with keyframes and within the story,
    names only of the cast (a stranger only in a text-only story), a frame budget each pass fits.
    ``chunked``: more shots than chunk_size > 0. ``racl``: always / never / sometimes a patch."""
    n_shots = draw(st.integers(2 if chunked else 1, 7))
    modes = MODES if n_shots >= 2 else MODES[:2]
    mode = draw(st.sampled_from(modes))
    n_chars = draw(st.sampled_from((1, 1, 2, 2, 3, 3) if mode == "reference_to_shot" else (0, 1, 1, 2, 2, 3, 3)))
    width, height = draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES))
    fit = draw(st.sampled_from(("pad_white", "crop", "stretch", "error")))

    def size():
        return (height, width) if fit == "error" else (draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES)))
    chars = tuple(CharSpec(name=NAMES[i], refs=draw(st.integers(1, 2)), size=size(), mask=draw(st.booleans()),
                           mask_meaning=draw(st.sampled_from(("auto", "1 = character", "1 = background"))),
                           description=draw(st.sampled_from(DESCRIPTIONS)),
                           kind=draw(st.sampled_from(("character", "character", "location", "prop"))))
                  for i in range(n_chars))
    names = tuple(c.name for c in chars)
    if mode == "shot_to_shot":
        k = draw(st.integers(1, n_shots - 1))
        given = [j < k for j in range(n_shots)]
    elif mode == "edit":
        given = draw(st.lists(st.booleans(), min_size=n_shots, max_size=n_shots)
                     .filter(lambda g: any(g) and not all(g)))
    else:
        given = [False] * n_shots
    keyframes = draw(st.booleans())
    # A given shot is a locked keyframe or the Shot Script's own image.
    lock_it = [g and keyframes and draw(st.booleans()) for g in given]
    lock = tuple(j + 1 for j, lk in enumerate(lock_it) if lk)
    stranger = mode == "text_to_shot" and not names and draw(st.booleans())
    shots = []
    for j in range(n_shots):
        cast = tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=3))) if names else ()
        if stranger and j == n_shots - 1:
            cast += ("Zed",)
        known = tuple(n for n in cast if n in names)
        shots.append(ShotSpec(prompt=draw(st.sampled_from(PROMPTS)), characters=cast, image=given[j] and not lock_it[j],
                              boxes=draw(boxes(known, width, height)) if known else "",
                              masks=bool(cast) and draw(st.booleans()),
                              seed=draw(st.sampled_from((-1, -1, -1, 7)))))
    patch = None
    if racl or (racl is None and draw(st.booleans())):
        start = draw(st.sampled_from((0.0, 0.3)))
        patch = RaclSpec(strength=draw(st.sampled_from((0.0, 0.5, 1.0))), start_percent=start,
                         end_percent=draw(st.sampled_from((0.5, 1.0))), layers=draw(st.sampled_from(("all", "0", "1",
                                                                                                   "0-1"))),
                         auto_regions=draw(st.booleans()))
    spec = StorySpec(
        chars=chars, shots=tuple(shots), mode=mode, width=width, height=height,
        repeat=draw(st.sampled_from((4, 4, 4, 8))), fit=fit, keyframes=keyframes, lock=lock,
        seed=draw(st.integers(0, 2 ** 32)), steps=draw(st.integers(1, 2)), cfg=draw(st.sampled_from((1.0, 2.0))),
        ref_cfg=draw(st.sampled_from((1.0, 2.0))),
        chunk_size=draw(st.integers(1, n_shots - 1) if chunked else st.integers(0, 4)),
        context_shots=draw(st.integers(0, 2)), racl=patch, data_seed=draw(st.integers(0, 1000)))
    need = max(pass_frames(spec), default=0)
    budget = draw(st.sampled_from([v for v in (6, 12, 21) if v >= need] or [need]))
    spec = spec.replace(max_latent_frames=budget)
    assert not problems(spec), f"valid_stories built a story the oracle refuses: {sorted(problems(spec))}"
    return spec


# Faults a user can make, each with the (node, input) it must be reported under.
FAULTS = ("width", "repeat", "lock past the end", "lock without keyframes", "stranger", "fit error", "no cast",
          "given shot", "gap", "racl window", "frame budget")


@st.composite
def invalid_stories(draw) -> tuple[StorySpec, tuple[str, ...]]:
    """A valid story with one or two faults put in (the oracle must then list at least one input)."""
    spec = draw(valid_stories())
    faults = []
    for fault in draw(st.lists(st.sampled_from(FAULTS), min_size=1, max_size=2, unique=True)):
        S, names = len(spec.shots), [c.name for c in spec.chars]
        if fault == "width":
            spec = spec.replace(**{draw(st.sampled_from(("width", "height"))): draw(st.sampled_from((8, 40, 50)))})
        elif fault == "repeat":
            spec = spec.replace(repeat=draw(st.sampled_from((0, 2, 6))))
        elif fault == "lock past the end":
            spec = spec.replace(keyframes=True, lock=tuple(sorted(set(spec.lock) | {S + draw(st.integers(1, 2))})))
        elif fault == "lock without keyframes":
            spec = spec.replace(keyframes=False, lock=spec.lock or (1,))
        elif fault == "stranger" and (names or spec.mode != "text_to_shot"):
            j = draw(st.integers(0, S - 1))
            shots = list(spec.shots)
            shots[j] = ShotSpec(shots[j].prompt, shots[j].characters + ("Zed",), shots[j].image, shots[j].boxes,
                                shots[j].masks, shots[j].seed)
            spec = spec.replace(shots=tuple(shots))
        elif fault == "fit error" and spec.chars and spec.mode != "text_to_shot":
            c = spec.chars[0]
            other = (spec.height + 16, spec.width)
            spec = spec.replace(fit="error", chars=(CharSpec(c.name, c.refs, other, c.mask, c.mask_meaning,
                                                             c.description, c.kind),) + spec.chars[1:])
        elif fault == "no cast" and spec.mode == "reference_to_shot":
            spec = spec.replace(chars=())
        elif fault == "given shot" and spec.mode in ("reference_to_shot", "text_to_shot"):
            j = draw(st.integers(0, S - 1))
            shots = list(spec.shots)
            shots[j] = ShotSpec(shots[j].prompt, shots[j].characters, True, shots[j].boxes, shots[j].masks,
                                shots[j].seed)
            spec = spec.replace(shots=tuple(shots))
        elif fault == "gap" and spec.mode in ("shot_to_shot", "edit"):
            # shot_to_shot: a given shot after a generated one; edit (and shot_to_shot): every shot given
            everything = spec.mode == "edit" or draw(st.booleans())
            given = [True] * S if everything else [False] * (S - 1) + [True]
            shots = tuple(ShotSpec(s.prompt, s.characters, g, s.boxes, s.masks, s.seed)
                          for s, g in zip(spec.shots, given))
            spec = spec.replace(shots=shots, lock=(), keyframes=False)
        elif fault == "racl window":
            r = spec.racl or RaclSpec()
            spec = spec.replace(racl=RaclSpec(r.strength, 0.8, 0.2, r.layers, r.auto_regions))
        elif fault == "frame budget" and pass_frames(spec) and max(pass_frames(spec)) > 1:
            spec = spec.replace(max_latent_frames=max(pass_frames(spec)) - 1)
        else:
            continue
        faults.append(fault)
    if not faults:     # none applied to this story: the one that always does
        spec, faults = spec.replace(repeat=6), ["repeat"]
    return spec, tuple(faults)


# -- the checks -------------------------------------------------------------------------------------
def run_or_refuse(N, story_models, pack_module, spec: StorySpec, **kw):
    """The run, or None when the story was refused as ``problems(spec)`` says it must be."""
    Error = pack_module("errors").DreamShotInputError
    expected = problems(spec)
    note(f"expected problems: {sorted(expected)}")
    try:
        run = run_story(N, story_models, spec, **kw)
    except Error as e:
        assert e.node and e.input_name and e.fix.strip(), f"an error without node, input or fix: {e}"
        assert (e.node, e.input_name) in expected, f"refused for {(e.node, e.input_name)}, expected one of " \
                                                   f"{sorted(expected)}: {e}"
        event(f"refused: {e.node} / {e.input_name}")
        return None
    except Exception as e:
        note(f"expected problems: {sorted(expected)}")
        raise AssertionError(f"not a DreamShotInputError: {type(e).__name__}: {e}") from e
    assert not expected, f"ran although it should have been refused for {sorted(expected)}"
    event("ran" + (f" in chunks of {spec.chunk_size}" if 0 < spec.chunk_size < len(spec.shots) else ""))
    return run


def check_keyframes(spec: StorySpec, run) -> None:
    S = len(spec.shots)
    images = run.images
    assert images.shape == (S, spec.height, spec.width, 3)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert run.latent.shape[2] == S * spec.repeat // 4           # shot frames only
    assert torch.isfinite(run.latent).all()
    inputs = run.inputs
    locked = {j - 1 for j in spec.lock}
    for j, g in enumerate(given_shots(spec)):
        if not g:
            continue
        want = inputs["keyframes"][j] if j in locked else inputs["shot_images"][j][0]
        assert torch.equal(images[j], want), f"given shot {j + 1} is not byte-identical"
    refs = [r for r in run.sequence.plan.ref_images]
    for j in range(S):
        for r in refs:
            assert not torch.equal(images[j], r.to(images)), f"keyframe {j + 1} is a reference image"


@seed(FUZZ_SEED)
@settings(max_examples=examples("valid"), deadline=DEADLINE)
@given(spec=valid_stories())
def test_valid_story_works_and_keeps_its_invariants(N, story_models, pack_module, tmp_path_factory, spec):
    with hang_guard(*EXAMPLE_GUARD_S, f"the story {spec!r}"):
        run = run_or_refuse(N, story_models, pack_module, spec, sheet_dir=tmp_path_factory.getbasetemp() / "sheets")
        assert run is not None
        check_keyframes(spec, run)
        again, _ = sample(N, run.model, run.sequence, spec)
    assert torch.equal(run.images, again), "the same seed gave other keyframes"


@seed(FUZZ_SEED)
@settings(max_examples=examples("invalid"), deadline=DEADLINE)
@given(case=invalid_stories())
def test_invalid_story_is_refused_naming_the_input(N, story_models, pack_module, case):
    spec, faults = case
    note(f"faults put in: {faults}")
    assert problems(spec), f"the faults {faults} left a story the oracle accepts"
    for fault in faults:
        event(f"fault: {fault}")
    with hang_guard(*EXAMPLE_GUARD_S, f"the story {spec!r}"):
        assert run_or_refuse(N, story_models, pack_module, spec) is None


@seed(FUZZ_SEED)
@settings(max_examples=examples("chunks"), deadline=DEADLINE)
@given(spec=valid_stories(chunked=True))
def test_chunked_and_one_pass_keep_the_same_shots(N, story_models, pack_module, spec):
    with hang_guard(*EXAMPLE_GUARD_S, f"the story {spec!r}"):
        run = run_or_refuse(N, story_models, pack_module, spec)
        one_pass = run_or_refuse(N, story_models, pack_module,
                                 spec.replace(chunk_size=0, context_shots=0, max_latent_frames=512))
    assert run is not None and one_pass is not None
    given = given_shots(spec)
    for r in (run, one_pass):
        check_keyframes(spec, r)
        # Generated shots are new: none equals the earlier storyboard's image in its place.
        if spec.keyframes:
            for j, g in enumerate(given):
                if not g:
                    assert not torch.equal(r.images[j], r.inputs["keyframes"][j]), f"shot {j + 1} was not generated"
    kept = [torch.equal(a, b) for a, b in zip(run.images, one_pass.images)]
    assert all(k for k, g in zip(kept, given) if g)


@seed(FUZZ_SEED)
@settings(max_examples=examples("racl"), deadline=DEADLINE)
@given(spec=valid_stories(racl=True))
def test_racl_patch_at_strength_zero_is_no_patch(N, story_models, pack_module, spec):
    spec = spec.replace(racl=RaclSpec(strength=0.0, start_percent=spec.racl.start_percent,
                                      end_percent=spec.racl.end_percent, layers=spec.racl.layers,
                                      auto_regions=spec.racl.auto_regions))
    inputs = story_inputs(spec)
    with hang_guard(*EXAMPLE_GUARD_S, f"the story {spec!r}"):
        patched = run_or_refuse(N, story_models, pack_module, spec, inputs=inputs)
        plain = run_or_refuse(N, story_models, pack_module, spec.replace(racl=None), inputs=inputs)
    assert patched is not None and plain is not None
    assert torch.equal(patched.images, plain.images)
    assert torch.equal(patched.latent, plain.latent)


def test_profiles_are_registered():
    assert settings.get_profile("ci").max_examples < settings.get_profile("nightly").max_examples
    assert settings.default.database is not None
    for test in (test_valid_story_works_and_keeps_its_invariants, test_invalid_story_is_refused_naming_the_input,
                 test_chunked_and_one_pass_keep_the_same_shots, test_racl_patch_at_strength_zero_is_no_patch):
        assert test.hypothesis.inner_test is not None and test._hypothesis_internal_use_settings.deadline == DEADLINE
    assert PACK and RACL and SAMPLER   # the names the oracle uses
