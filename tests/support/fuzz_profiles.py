"""The hypothesis profiles of the fuzz tests (tests/test_story_fuzz.py, tests/test_story_file_fuzz.py;
docs/fuzzing.md): "ci" (default) and DREAMSHOT_FUZZ=nightly. Each test runs its own number of examples (EXAMPLES)
and sets its own per-example ``deadline`` (a slow example fails; sized from runs on a
busy 2-core machine, far above them) and runs each example under a wall guard (support/guards.py: a
hang fails the test instead of running forever)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("DREAMSHOT_FUZZ", "ci")
# Examples per test and profile. ci: a few minutes for all of them on a busy 2-core machine (every
# valid story is sampled, some twice); nightly: as many as a night allows (docs/fuzzing.md has the
# measured times). "files" reads story files only, no sampling: cheap.
EXAMPLES = {
    "ci": {"valid": 24, "invalid": 40, "chunks": 10, "racl": 10, "files": 300},
    "nightly": {"valid": 400, "invalid": 2000, "chunks": 200, "racl": 200, "files": 15000},
}
_DB = DirectoryBasedExampleDatabase(
    os.environ.get("DREAMSHOT_HYPOTHESIS_DB") or str(Path.home() / ".cache" / "dreamshot-hypothesis"))
_COMMON = dict(database=_DB, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                      HealthCheck.function_scoped_fixture])
for _name, _counts in EXAMPLES.items():
    settings.register_profile(_name, max_examples=_counts["valid"], **_COMMON)
settings.load_profile(PROFILE)


def examples(test: str) -> int:
    """How many examples ``test`` (a key of EXAMPLES) runs in the loaded profile."""
    return EXAMPLES[PROFILE][test]
