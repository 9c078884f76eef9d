"""Scoring generated shots with the colour classifier, and the results table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..shapes import SHAPE_CAST, classify_region
from .dataset import StorySpec

OUTCOMES = ("correct", "confused", "other", "none")


@dataclass
class Tally:
    """Outcomes over every expected placement (one per character the script puts in a shot)."""

    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in OUTCOMES})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def rate(self, outcome: str) -> float:
        return self.counts[outcome] / self.total if self.total else float("nan")


def who_is_there(image: np.ndarray, spec: StorySpec, j: int, k: int) -> int | None:
    """The SHAPE_CAST index the colour classifier finds in placement k of shot j (None: nobody)."""
    return classify_region(image, spec.shots[j][k].box, SHAPE_CAST)[0]


def score_placement(image: np.ndarray, spec: StorySpec, j: int, k: int) -> str:
    """correct: the expected character; confused: another character of this story's cast;
    other: a cast member not in this story; none: no character colour in the region."""
    p = spec.shots[j][k]
    found = who_is_there(image, spec, j, k)
    if found is None:
        return "none"
    if found == p.character:
        return "correct"
    return "confused" if found in spec.cast.values() else "other"


def score_story(tally: Tally, images: list[np.ndarray], spec: StorySpec) -> list[list[str]]:
    outcomes = []
    for j, image in enumerate(images):
        row = [score_placement(image, spec, j, k) for k in range(len(spec.shots[j]))]
        for o in row:
            tally.counts[o] += 1
        outcomes.append(row)
    return outcomes


def renamed(spec: StorySpec) -> StorySpec:
    """The same story with its role names rotated over the cast (Mira's shots now name Theo, ...):
    only the captions change, so a model that reads the names must now draw another reference."""
    from dataclasses import replace

    roles = list(spec.cast)
    to = dict(zip(roles, roles[1:] + roles[:1]))
    shots = [[replace(p, role=to[p.role], character=spec.cast[to[p.role]]) for p in shot] for shot in spec.shots]
    return replace(spec, shots=shots)


def name_check(pairs: list[tuple[list[np.ndarray], list[np.ndarray], StorySpec]]) -> dict:
    """Do the captions' names steer R2S? ``pairs``: (shots sampled from the script, from its renamed
    captions with the same seed, the script). ``pixel_change``: mean absolute difference (0-1);
    ``character_changed``: placements whose classified character differs; ``follows_new_name``:
    renamed placements showing the newly named character (what reading the names gives)."""
    diffs, changed, follows, total = [], 0, 0, 0
    for orig, new, spec in pairs:
        other = renamed(spec)
        for j, (a, b) in enumerate(zip(orig, new)):
            diffs.append(float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0))
            for k in range(len(spec.shots[j])):
                total += 1
                changed += who_is_there(a, spec, j, k) != who_is_there(b, spec, j, k)
                follows += score_placement(b, other, j, k) == "correct"
    return {"stories": len(pairs), "placements": total, "pixel_change": float(np.mean(diffs)) if diffs else float("nan"),
            "character_changed": changed / total if total else float("nan"),
            "follows_new_name": follows / total if total else float("nan")}


def chance_accuracy(stories: list[StorySpec]) -> float:
    """Accuracy of a guess that knows the story's cast but not who is who (uniform over the cast)."""
    per = [1.0 / len(s.cast) for s in stories for shot in s.shots for _ in shot]
    return float(np.mean(per)) if per else float("nan")


# -- the grid: seeds summarised -------------------------------------------------------------------
def rates(counts: dict[str, int]) -> dict[str, float]:
    t = Tally(dict(counts))
    return {k: t.rate(k) for k in OUTCOMES}


def summarise(results: list[dict], conditions, inits, losses) -> dict:
    """(condition, init, loss) -> per-seed rates and their mean / min / max over seeds."""
    out = {}
    for c in conditions:
        for i in inits:
            for lo in losses:
                cells = sorted((r for r in results if r["init"] == i and r["loss"] == lo), key=lambda r: r["seed"])
                if not cells:
                    continue
                per_seed = [rates(r["counts"][c]) for r in cells]
                out[c, i, lo] = {
                    "seeds": [r["seed"] for r in cells], "placements": [sum(r["counts"][c].values()) for r in cells],
                    "per_seed": per_seed,
                    **{f"{k}_{stat}": f([p[k] for p in per_seed])
                       for k in OUTCOMES for stat, f in (("mean", np.mean), ("min", np.min), ("max", np.max))}}
    return out


def _cell(row: dict, k: str) -> str:
    return f"{row[k + '_mean']:.1%} ({row[k + '_min']:.1%}–{row[k + '_max']:.1%})"


def grid_table(summary: dict, labels: dict, init_labels: dict, loss_labels: dict, chance: float,
               ceiling: dict[str, int] | None) -> str:
    lines = ["| condition | fine-tuned from | training loss | placements per seed | identity accuracy, mean (min–max) "
             "| confusion rate | other cast | none | accuracy per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for (c, i, lo), row in summary.items():
        per = " / ".join(f"{p['correct']:.1%}" for p in row["per_seed"])
        n = "/".join(str(x) for x in sorted(set(row["placements"])))
        lines.append(f"| {labels[c]} | {init_labels[i]} | {loss_labels[lo]} | {n} | {_cell(row, 'correct')} | "
                     f"{_cell(row, 'confused')} | {row['other_mean']:.1%} | {row['none_mean']:.1%} | {per} |")
    if ceiling:
        r = rates(ceiling)
        lines.append(f"| real shots through the VAE (ceiling) | | | {sum(ceiling.values())} | {r['correct']:.1%} | "
                     f"{r['confused']:.1%} | {r['other']:.1%} | {r['none']:.1%} | |")
    lines.append(f"| (chance: uniform guess within each story's cast) | | | | {chance:.1%} | {1 - chance:.1%} | | | |")
    return "\n".join(lines)


def goal_check(summary: dict, target: float = 0.60) -> list[str]:
    """The goal stated before the run (docs/proof.md), checked on the R2S rows without the patch."""
    out = []
    for init in ("prior", "scratch"):
        racl, zero = summary.get(("r2s", init, "racl")), summary.get(("r2s", init, "noracl"))
        if racl is None or zero is None:
            continue
        spread = max(racl["correct_max"] - racl["correct_min"], zero["correct_max"] - zero["correct_min"])
        diff = racl["correct_mean"] - zero["correct_mean"]
        paired = [a["correct"] - b["correct"] for a, b in zip(racl["per_seed"], zero["per_seed"])]
        where = "video prior" if init == "prior" else "scratch (for comparison)"
        out.append(f"- {where}: plain R2S identity accuracy {racl['correct_mean']:.1%} (RACL) / "
                   f"{zero['correct_mean']:.1%} (lambda 0) against the {target:.0%} goal: "
                   f"{'met' if racl['correct_mean'] >= target else 'NOT met'}; RACL minus lambda 0 = {diff:+.1%} "
                   f"against a seed spread (largest min–max range) of {spread:.1%}: "
                   f"{'met' if diff > spread else 'NOT met'} (per seed: "
                   + ", ".join(f"{d:+.1%}" for d in paired) + ")")
    return out


def choice_analysis(results: list[dict], stories: list[StorySpec], condition: str) -> dict:
    """How a condition's cast choices go wrong, over cells' per-story ``found`` lists: which of the
    story's references (in reference order) the generated character is, against which it should be,
    and how often a shot repeats the character generated in the shot before it (never in the data:
    a story's shots show three different characters)."""
    by_id = {s.id: s for s in stories}
    picked = np.zeros(4)
    wanted = np.zeros(4)
    repeats = shots = 0
    for r in results:
        for entry in r["per_story"]:
            spec = by_id[entry["id"]]
            order = list(spec.cast.values())
            found = [row[0] for row in entry[condition + "_found"]]
            for j, f in enumerate(found):
                wanted[order.index(spec.shots[j][0].character)] += 1
                if f in order:
                    picked[order.index(f)] += 1
                if j:
                    shots += 1
                    repeats += int(f is not None and f == found[j - 1])
    return {"reference_picked": (picked / max(1, wanted.sum())).round(4).tolist(),
            "reference_wanted": (wanted / max(1, wanted.sum())).round(4).tolist(),
            "repeats_previous_shot": round(repeats / max(1, shots), 4)}
