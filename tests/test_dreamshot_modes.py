"""Modes decide which shots are clean; contradictions are refused with a fix."""

import pytest

from dreamshot.errors import DreamShotInputError
from dreamshot.modes import Mode, parse_shot_list, resolve_clean_shots


def test_each_mode_clean_shots():
    assert resolve_clean_shots(Mode.REFERENCE_TO_SHOT, 2, [False] * 3) == (False, False, False)
    assert resolve_clean_shots("text_to_shot", 0, [False] * 3) == (False, False, False)
    assert resolve_clean_shots("shot_to_shot", 0, [True, True, False]) == (True, True, False)
    assert resolve_clean_shots("edit", 1, [True, False, True]) == (True, False, True)


@pytest.mark.parametrize("mode, refs, given, needle", [
    ("reference_to_shot", 0, [False], "needs at least one character"),
    ("reference_to_shot", 1, [True, False], "carry an image"),
    ("text_to_shot", 0, [True, False], "carry an image"),
    ("shot_to_shot", 0, [False, True], "follows generated shot 1"),
    ("shot_to_shot", 0, [False, False], "none was given"),
    ("edit", 0, [True, True], "nothing to generate"),
    ("bogus", 0, [False], "unknown mode"),
])
def test_contradictions(mode, refs, given, needle):
    with pytest.raises(DreamShotInputError, match=needle):
        resolve_clean_shots(mode, refs, given)


def test_parse_shot_list():
    assert parse_shot_list("1, 3-4", 6) == [0, 2, 3]
    assert parse_shot_list(" ", 6) == []
    assert parse_shot_list("5-3", 6) == [2, 3, 4]
    with pytest.raises(DreamShotInputError, match="outside shots 1..6"):
        parse_shot_list("7", 6)
    with pytest.raises(DreamShotInputError, match="not a shot number"):
        parse_shot_list("two", 6)
