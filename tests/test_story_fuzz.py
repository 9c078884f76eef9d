"""Property-based tests of the whole story path (issue 18): generated stories and settings, run
through the nodes inside the real ComfyUI (Character Reference / Shot Script chains, Shot Sequence
Pack, RACL Attention Patch, DreamShot Sampler, Storyboard Sheet; support/story_fuzz.py).

Every story either works or is refused with a DreamShotInputError naming the node, the right input
(support.story_fuzz.problems, written from what the README promises) and a fix. On success: one
keyframe per shot, finite, in 0..1; given and locked shots byte-identical; no reference among the
keyframes; the same seed gives the same keyframes; a chunked run and a one-pass run keep and
generate the same shots; the RACL patch at strength 0 equals no patch.

Profiles (docs/fuzzing.md): "ci" (default) runs a bounded number of examples from a fixed seed;
DREAMSHOT_FUZZ=nightly runs many more. Failing examples are kept in ~/.cache/dreamshot-hypothesis
($DREAMSHOT_HYPOTHESIS_DB) and replayed first; every shrunk failure found so far is an ordinary test
in tests/test_story_regressions.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from support.story_fuzz import (
    PACK, RACL, SAMPLER, CharSpec, RaclSpec, ShotSpec, StorySpec, given_shots, problems, run_story, sample,
    story_inputs,
)

pytestmark = pytest.mark.comfyui

_DB = DirectoryBasedExampleDatabase(
    os.environ.get("DREAMSHOT_HYPOTHESIS_DB") or str(Path.home() / ".cache" / "dreamshot-hypothesis"))
_COMMON = dict(deadline=None, database=_DB, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("nightly", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("DREAMSHOT_FUZZ", "ci"))
# Per test, a share of the profile's examples (the first test checks the most).
SHARE = {"any": 1.0, "chunks": 0.4, "racl": 0.4}
FUZZ_SEED = 18


def _examples(test: str) -> int:
    return max(1, int(settings.default.max_examples * SHARE[test]))


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
def stories(draw, valid_modes: bool = True, chunked: bool = False, racl: bool | None = None) -> StorySpec:
    """A story and its settings. ``valid_modes``: most stories give images to the shots the way their
    mode needs (else the mode checks refuse nearly every story); the rest are drawn freely.
    ``chunked``: always more shots than chunk_size > 0. ``racl``: always (True) / never (False) /
    sometimes (None) an RACL Attention Patch."""
    n_chars = draw(st.sampled_from((0, 1, 1, 2, 2, 3, 3)))
    chars = tuple(CharSpec(name=NAMES[i], refs=draw(st.integers(1, 2)),
                           size=(draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES))),
                           mask=draw(st.booleans()),
                           mask_meaning=draw(st.sampled_from(("auto", "1 = character", "1 = background"))),
                           description=draw(st.sampled_from(DESCRIPTIONS)),
                           kind=draw(st.sampled_from(("character", "character", "location", "prop"))))
                  for i in range(n_chars))
    names = tuple(c.name for c in chars)
    width, height = draw(st.sampled_from(SIZES)), draw(st.sampled_from(SIZES))
    n_shots = draw(st.integers(2 if chunked else 1, 7))
    mode = draw(st.sampled_from(MODES))
    keyframes = draw(st.booleans())
    if valid_modes and draw(st.sampled_from((True,) * 4 + (False,))):
        if mode in ("shot_to_shot", "edit") and n_shots >= 2:
            if mode == "shot_to_shot":
                k = draw(st.integers(1, n_shots - 1))
                given = [j < k for j in range(n_shots)]
            else:
                given = draw(st.lists(st.booleans(), min_size=n_shots, max_size=n_shots)
                             .filter(lambda g: any(g) and not all(g)))
        else:
            given = [False] * n_shots
        # A given shot is a locked keyframe or the Shot Script's own image.
        lock_it = [g and keyframes and draw(st.booleans()) for g in given]
        images = [g and not lk for g, lk in zip(given, lock_it)]
        lock = tuple(j + 1 for j, lk in enumerate(lock_it) if lk)
    else:
        images = draw(st.lists(st.booleans(), min_size=n_shots, max_size=n_shots))
        lock = tuple(sorted(draw(st.sets(st.integers(1, n_shots + 1), max_size=n_shots))))
    # One story in ten has a shot naming someone with no reference (sampled_from: uniform, where
    # integers() favours its bounds).
    stranger = draw(st.sampled_from((-1,) * 9 + (n_shots - 1,)))
    shots = []
    for j in range(n_shots):
        cast = tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=3))) if names else ()
        if j == stranger:
            cast += ("Zed",)
        known = tuple(n for n in cast if n in names)
        shots.append(ShotSpec(prompt=draw(st.sampled_from(PROMPTS)), characters=cast, image=images[j],
                              boxes=draw(boxes(known, width, height)) if known else "",
                              masks=bool(cast) and draw(st.booleans()),
                              seed=draw(st.sampled_from((-1, -1, -1, 7)))))
    patch = None
    if racl or (racl is None and draw(st.booleans())):
        patch = RaclSpec(strength=draw(st.sampled_from((0.0, 0.5, 1.0))),
                        start_percent=draw(st.sampled_from((0.0, 0.3))),
                        end_percent=draw(st.sampled_from((0.5, 1.0))),
                        layers=draw(st.sampled_from(("all", "0", "1", "0-1"))),
                        auto_regions=draw(st.booleans()))
    return StorySpec(
        chars=chars, shots=tuple(shots), mode=mode, width=width, height=height,
        repeat=draw(st.sampled_from((4, 4, 4, 8, 6))), fit=draw(st.sampled_from(("pad_white", "crop", "stretch",
                                                                                  "error"))),
        max_latent_frames=draw(st.sampled_from((21, 21, 12, 6))), keyframes=keyframes, lock=lock,
        seed=draw(st.integers(0, 2 ** 32)), steps=draw(st.integers(1, 2)), cfg=draw(st.sampled_from((1.0, 2.0))),
        ref_cfg=draw(st.sampled_from((1.0, 2.0))),
        chunk_size=draw(st.integers(1, n_shots - 1) if chunked else st.integers(0, 4)),
        context_shots=draw(st.integers(0, 2)), racl=patch, data_seed=draw(st.integers(0, 1000)))


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
@settings(max_examples=_examples("any"))
@given(spec=stories())
def test_any_story_works_or_names_the_input(N, story_models, pack_module, tmp_path_factory, spec):
    run = run_or_refuse(N, story_models, pack_module, spec, sheet_dir=tmp_path_factory.getbasetemp() / "sheets")
    if run is None:
        return
    check_keyframes(spec, run)
    again, _ = sample(N, run.model, run.sequence, spec)
    assert torch.equal(run.images, again), "the same seed gave other keyframes"


@seed(FUZZ_SEED)
@settings(max_examples=_examples("chunks"))
@given(spec=stories(chunked=True))
def test_chunked_and_one_pass_keep_the_same_shots(N, story_models, pack_module, spec):
    run = run_or_refuse(N, story_models, pack_module, spec)
    if run is None:
        return
    one_pass = run_or_refuse(N, story_models, pack_module,
                             spec.replace(chunk_size=0, context_shots=0, max_latent_frames=512))
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
@settings(max_examples=_examples("racl"))
@given(spec=stories(racl=True))
def test_racl_patch_at_strength_zero_is_no_patch(N, story_models, pack_module, spec):
    spec = spec.replace(racl=RaclSpec(strength=0.0, start_percent=spec.racl.start_percent,
                                      end_percent=spec.racl.end_percent, layers=spec.racl.layers,
                                      auto_regions=spec.racl.auto_regions))
    inputs = story_inputs(spec)
    patched = run_or_refuse(N, story_models, pack_module, spec, inputs=inputs)
    if patched is None:
        return
    plain = run_or_refuse(N, story_models, pack_module, spec.replace(racl=None), inputs=inputs)
    assert torch.equal(patched.images, plain.images)
    assert torch.equal(patched.latent, plain.latent)


def test_profiles_are_registered():
    assert settings.get_profile("ci").max_examples < settings.get_profile("nightly").max_examples
    assert settings.get_profile("ci").deadline is None
    assert settings.default.database is not None
    assert PACK and RACL and SAMPLER   # the names the oracle uses
