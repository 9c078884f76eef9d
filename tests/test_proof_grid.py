"""The proof grid's plumbing without training: settings, the job plan, the seed summary, the table
and the goal check (dreamshot.proof.settings / grid / report). No ComfyUI needed."""

from __future__ import annotations

import json

import pytest

from dreamshot.proof.grid import INIT_LABELS, _check_settings, plan_jobs
from dreamshot.proof.report import goal_check, grid_table, name_check, renamed, summarise
from dreamshot.proof.settings import CONDITION_LABELS, CONDITIONS, INITS, LOSSES, Paths, ProofSettings, cells


def test_settings_overrides_and_round_trip():
    s = ProofSettings().with_overrides(["train_steps=2000", "seeds=[4, 5]", "split=dev", "lr=0.001"])
    assert (s.train_steps, s.seeds, s.split, s.lr) == (2000, (4, 5), "dev", 0.001)
    assert ProofSettings.from_json(json.loads(json.dumps(s.to_json()))) == s
    for bad in ("steps=3", "train_steps", "split=train"):
        with pytest.raises(ValueError):
            ProofSettings().with_overrides([bad])


def test_jobs_wait_for_what_they_need_and_the_prior_starts_first(tmp_path):
    s = ProofSettings()
    jobs = plan_jobs(Paths(tmp_path), s)
    assert [j.name for j in jobs[:2]] == ["assets", "prior"] and len(jobs) == 2 + 2 * 2 * len(s.seeds)
    for j in jobs[2:]:
        assert j.needs == (["prior"] if j.name.startswith("cell:prior") else ["assets"])
    starts = [j.name for j in jobs[2:]]
    assert starts.index("cell:scratch-racl-s2") < starts.index("cell:prior-racl-s0")   # scratch cells fill the wait
    assert len({j.done for j in jobs}) == len(jobs)


def test_a_grid_folder_refuses_other_settings(tmp_path):
    p = Paths(tmp_path / "g")
    _check_settings(p, ProofSettings())
    _check_settings(p, ProofSettings())   # the same settings: continue
    with pytest.raises(SystemExit, match="train_steps"):
        _check_settings(p, ProofSettings(train_steps=10))


def _result(init, loss, seed, correct):
    counts = {c: {"correct": correct, "confused": 100 - correct - 10, "other": 10, "none": 0} for c in CONDITIONS}
    return {"init": init, "loss": loss, "seed": seed, "counts": counts}


def test_seed_summary_table_and_goal_check():
    acc = {("prior", "racl"): (70, 66, 74), ("prior", "noracl"): (60, 62, 58),
           ("scratch", "racl"): (30, 40, 35), ("scratch", "noracl"): (33, 36, 30)}
    results = [_result(i, lo, seed, a[seed]) for (i, lo), a in acc.items() for seed in range(3)]
    summary = summarise(results, CONDITIONS, INITS, LOSSES)
    row = summary["r2s", "prior", "racl"]
    assert row["correct_mean"] == pytest.approx(0.70) and (row["correct_min"], row["correct_max"]) == (0.66, 0.74)
    assert row["placements"] == [100, 100, 100] and row["other_mean"] == pytest.approx(0.10)
    table = grid_table(summary, CONDITION_LABELS, INIT_LABELS, {"racl": "RACL", "noracl": "lambda 0"}, 1 / 3,
                       {"correct": 120, "confused": 0, "other": 0, "none": 0})
    lines = table.splitlines()
    assert len(lines) == 2 + len(summary) + 2 and all(line.count("|") == 10 for line in lines)
    assert "| R2S (no inference patch) | video prior | RACL | 100 | 70.0% (66.0%–74.0%) |" in table
    assert "70.0% / 66.0% / 74.0%" in table and "| real shots through the VAE (ceiling) | | | 120 | 100.0% |" in table
    goals = goal_check(summary)
    # prior: 70 % >= 60 %; RACL - lambda 0 = +10 points > the largest range (8 points)
    assert goals[0].count("NOT met") == 0 and "+10.0%" in goals[0] and "8.0%" in goals[0]
    # scratch: 35 % < 60 %; +0 points < 10 points
    assert goals[1].count("NOT met") == 2
    assert len(cells(ProofSettings())) == len(results)


def test_name_check_tells_a_model_that_reads_names_from_one_that_does_not():
    import random

    from dreamshot.proof import dataset as ds

    rng = random.Random(3)
    stories = [ds.make_story(f"s{i}", rng, 96, 48) for i in range(3)]
    for spec in stories:
        other = renamed(spec)
        assert other.cast == spec.cast and [ds.StorySpec.caption(other, j) for j in range(len(spec.shots))] != \
            [spec.caption(j) for j in range(len(spec.shots))]
        for a, b in zip(spec.shots, other.shots):
            for p, q in zip(a, b):   # every placement now names, and is, another cast member; same boxes
                assert q.role != p.role and q.character == spec.cast[q.role] and q.box == p.box
    truth = [[ds.render_shot(sp, j, 96, 48)[0] for j in range(len(sp.shots))] for sp in stories]
    follows = [[ds.render_shot(renamed(sp), j, 96, 48)[0] for j in range(len(sp.shots))] for sp in stories]
    reads = name_check([(t, f, sp) for t, f, sp in zip(truth, follows, stories)])
    ignores = name_check([(t, t, sp) for t, sp in zip(truth, stories)])
    n = sum(len(shot) for sp in stories for shot in sp.shots)
    assert reads["placements"] == ignores["placements"] == n and reads["stories"] == 3
    assert reads["follows_new_name"] == 1.0 and reads["character_changed"] == 1.0 and reads["pixel_change"] > 0.01
    assert ignores["follows_new_name"] == 0.0 and ignores["character_changed"] == 0.0 and ignores["pixel_change"] == 0.0
