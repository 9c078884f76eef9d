"""The proof grid's plumbing without training: settings, the job plan, the seed summary, the table
and the goal check (dreamshot.proof.settings / grid / report). No ComfyUI needed."""

from __future__ import annotations

import json

import pytest

from dreamshot.proof.grid import INIT_LABELS, _check_settings, plan_jobs
from dreamshot.proof.report import goal_check, grid_table, summarise
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
