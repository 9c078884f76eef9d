"""The story FILE fuzzer (issue 23): any bytes given to Load Story's parser (dreamshot.story_file.read_story,
confined to the folder as Load Story confines it to ComfyUI's input folder) are read, or refused with a
DreamShotInputError listing each problem as ``FILE:LINE: ...``; never another exception, never a hang
(a wall guard per example), never more than a fixed Python heap (tracemalloc peak per example).

What is generated: tests/support/story_file_fuzz.py (valid documents as YAML/JSON with hostile values
put in: alias and merge-key bombs, deep nesting, huge numbers and texts, tags; whole hostile files at
the limits; damaged bytes; raw bytes; images that are truncated, junk, header-only bombs). Profiles and
figures: docs/fuzzing.md.
"""

from __future__ import annotations

import datetime
import re

import pytest
from hypothesis import event, given, note, seed, settings
from hypothesis import strategies as st
from support.fuzz_profiles import examples
from support.guards import Hang, hang_guard, traced_peak
from support.story_file_fuzz import make_images, story_files

from dreamshot.errors import DreamShotInputError
from dreamshot.story_file import Story, read_story
from dreamshot.story_limits import load_file

FUZZ_SEED = 23
# Per example. The slowest (16,000 values, the most a file may hold: 0.3 s of CPU, ~4 s under
# tracemalloc) took up to 17 s of wall time on a 2-core machine at load ~10; the deadline is 3.5x that.
# The hang guard: 60 s of CPU time or 10 min of wall time (CPU time does not stretch on a busy machine).
DEADLINE = datetime.timedelta(seconds=60)
EXAMPLE_GUARD_S = (60, 600)
PEAK_BYTES = 48 * 2 ** 20       # the worst allowed file peaks at 13.5 MiB of Python heap
# Problems about the whole file, with no line to name.
WHOLE_FILE = ("the file is larger than", "(top): expected a mapping with 'shots' (and title, settings, characters), "
              "but the file is empty")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("story_file_fuzz")
    make_images(d)
    return d


def listed_problems(message: str) -> list[str]:
    """The problems of read_story's error, one per entry (a quoted value keeps its newlines escaped)."""
    body = message.split(" problem(s) in the story file ", 1)[1].split(":\n  ", 1)[1]
    body = body.rsplit("\n Fix: ", 1)[0]
    return [p for p in body.rstrip("\n").split("\n  ") if not re.fullmatch(r"\.\.\. and \d+ more", p)]


def check_refusal(error: DreamShotInputError, name: str, path) -> str:
    message = str(error)
    assert error.input_name == "story" and error.fix.strip() and "docs/story-files.md" in error.fix, message
    problems = listed_problems(message)
    assert problems, message
    for problem in problems:
        m = re.match(rf"{re.escape(name)}(:(\d+))?(:\d+)?: ", problem)
        assert m, f"a problem that does not start with FILE[:LINE]: {problem!r}"
        if m.group(2) is None and not problem[m.end() - 2:].lstrip(": ").startswith(WHOLE_FILE):
            # Only JSON that YAML cannot read (for line numbers) may leave a field's line out.
            assert name.endswith(".json") and load_file(path)[1] is None, f"no line number: {problem!r}"
    first = problems[0].split(": ", 1)[1]
    return re.sub(r"\d+", "N", re.sub(r"^[\w\[\].()]+: ", "", first))[:48]


@seed(FUZZ_SEED)
@settings(max_examples=examples("files"), deadline=DEADLINE)
@given(case=story_files())
def test_any_story_file_is_read_or_refused_with_file_line(folder, case):
    path = folder / case.name
    path.write_bytes(case.data)
    note(repr(case))
    event(case.kind.split(",")[0].split(" + ")[0])
    with hang_guard(*EXAMPLE_GUARD_S, f"reading {case!r}"):
        peak, outcome = traced_peak(read_story, path, folder)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, DreamShotInputError), f"not a DreamShotInputError: {type(outcome).__name__}: " \
                                                         f"{outcome}"
        event(f"refused: {check_refusal(outcome, case.name, path)}")
    else:
        assert isinstance(outcome, Story) and outcome.shots
        event("read")
    assert peak < PEAK_BYTES, f"{peak / 2 ** 20:.1f} MiB of Python heap for {case!r}"


def test_a_hanging_example_fails_at_once_naming_itself():
    """The wall guard turns a hang into a failure naming the example, and hypothesis does not replay or
    shrink it (which would hang again)."""
    calls = []

    @settings(max_examples=5, deadline=None, database=None)
    @given(st.integers(0, 3))
    def hangs(n):
        calls.append(n)
        with hang_guard(0.5, 30, f"example {n}"):
            while True:
                pass

    with pytest.raises(Hang, match=r"example \d ran past its hang guard \(0.5 s of CPU time"):
        hangs()
    assert len(calls) == 1
