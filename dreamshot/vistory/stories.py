"""ViStoryBench story files as the DreamShot release ships them (``vistory_dreamshot_ch_v1.json``).

One JSON object, story key -> story::

    {"01": {"prompt_cn": ["<shot 1 prompt>", "<shot 2 prompt>", ...],
            "role_indices": {"0": [0, 1], "1": [0], "3": []},      # shot index -> role ids (0-based)
            "ref_prompt_cn_format": ["<role 0 prompt>", "<role 1 prompt>"],
            "fg_url_list": ["01/image/role0/00.jpg", "01/image/role1/00.jpg"]}}  # relative to data_root

Read the way the official runner reads it: prompts are used verbatim (role tags such as ``<角色0>``
included), role ``k`` has the reference image ``fg_url_list[k]`` and the prompt
``ref_prompt_cn_format[k]``, a shot missing from ``role_indices`` (or with ``[]``) has no character.
Everything here is pure (no ComfyUI); images are only opened, under ``data_root``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DreamShotInputError
from ..images import load_image

PROMPT_FIELD = "prompt_cn"
REF_PROMPT_FIELD = "ref_prompt_cn_format"


@dataclass(frozen=True)
class VistoryStory:
    key: str
    prompts: tuple[str, ...]
    roles: tuple[tuple[int, ...], ...]   # per shot: role ids
    ref_prompts: tuple[str, ...]         # per role
    ref_paths: tuple[Path, ...]          # per role, resolved inside data_root

    @property
    def num_shots(self) -> int:
        return len(self.prompts)


def role_name(role: int) -> str:
    return f"role{role}"


def _bad(key: str, problem: str, fix: str) -> DreamShotInputError:
    return DreamShotInputError("stories", f"story {key!r}: {problem}", fix)


def _inside(root: Path, rel: str, key: str) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise _bad(key, f"reference path {rel!r} must be a relative path.", "give paths relative to --data-root.")
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise _bad(key, f"reference path {rel!r} leaves --data-root.", "give paths inside --data-root.")
    return path


def parse_story(key: str, raw: dict, data_root: Path, prompt_field: str = PROMPT_FIELD,
                ref_prompt_field: str = REF_PROMPT_FIELD) -> VistoryStory:
    """One story, checked: prompts, role map and reference files."""
    if not isinstance(raw, dict):
        raise _bad(key, "is not a JSON object.", "each story must be an object with the ViStoryBench fields.")
    for field_name in (prompt_field, "role_indices", ref_prompt_field, "fg_url_list"):
        if field_name not in raw:
            raise _bad(key, f"has no {field_name!r} field.",
                       "use the ViStoryBench JSON shipped with the DreamShot weights, or pass the field name "
                       "(--prompt-field / --ref-prompt-field).")
    prompts = raw[prompt_field]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise _bad(key, f"{prompt_field!r} must be a non-empty list of strings.", "one prompt per shot.")
    refs, ref_prompts = raw["fg_url_list"], raw[ref_prompt_field]
    if not isinstance(refs, list) or not isinstance(ref_prompts, list) or len(refs) != len(ref_prompts):
        raise _bad(key, f"'fg_url_list' ({len(refs) if isinstance(refs, list) else '?'}) and {ref_prompt_field!r} "
                   f"({len(ref_prompts) if isinstance(ref_prompts, list) else '?'}) must be lists of one entry per role.",
                   "give one reference image and one reference prompt per role.")
    role_map = raw["role_indices"]
    if not isinstance(role_map, dict):
        raise _bad(key, "'role_indices' must map shot indices to lists of role ids.", 'e.g. {"0": [0, 1]}.')
    roles: list[tuple[int, ...]] = [() for _ in prompts]
    for shot_key, ids in role_map.items():
        try:
            shot = int(shot_key)
        except (TypeError, ValueError):
            shot = -1
        if not 0 <= shot < len(prompts):
            raise _bad(key, f"'role_indices' names shot {shot_key!r}, but the story has {len(prompts)} shot(s) "
                       "(0-based).", "fix the shot index.")
        if not isinstance(ids, list) or not all(isinstance(r, int) and 0 <= r < len(refs) for r in ids):
            raise _bad(key, f"shot {shot_key}: roles {ids!r} must be ids 0..{len(refs) - 1}.",
                       "use the role ids of 'fg_url_list'.")
        roles[shot] = tuple(dict.fromkeys(ids))
    root = data_root.resolve()
    paths = tuple(_inside(root, rel, key) for rel in refs)
    used = {r for shot_roles in roles for r in shot_roles}
    for r in sorted(used):
        if not paths[r].is_file():
            raise _bad(key, f"reference image of role {r} not found: {paths[r]}.",
                       "point --data-root at the VistoryBench folder shipped with the DreamShot weights.")
    return VistoryStory(key=str(key), prompts=tuple(prompts), roles=tuple(roles),
                        ref_prompts=tuple(str(p) for p in ref_prompts), ref_paths=paths)


def read_stories(path: str | Path, data_root: str | Path, only: list[str] | None = None,
                 prompt_field: str = PROMPT_FIELD, ref_prompt_field: str = REF_PROMPT_FIELD) -> list[VistoryStory]:
    """All stories (or ``only`` those keys), sorted by key as the official runner processes them."""
    path, data_root = Path(path), Path(data_root)
    if not path.is_file():
        raise DreamShotInputError("stories", f"{path} not found.", "pass the ViStoryBench JSON "
                                  "(vistory_dreamshot_ch_v1.json from the DreamShot release).")
    if not data_root.is_dir():
        raise DreamShotInputError("data_root", f"{data_root} is not a folder.",
                                  "pass the VistoryBench folder the JSON's fg_url_list paths are relative to.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DreamShotInputError("stories", f"{path} is not valid JSON ({e}).", "pass the ViStoryBench JSON.") from None
    if not isinstance(raw, dict) or not raw:
        raise DreamShotInputError("stories", f"{path} holds no stories.", "it must map story keys to stories.")
    keys = sorted(raw)
    if only:
        unknown = [k for k in only if k not in raw]
        if unknown:
            raise DreamShotInputError("only", f"unknown story key(s) {unknown}.", f"pick among {keys[:10]}...")
        keys = [k for k in keys if k in set(only)]
    return [parse_story(k, raw[k], data_root, prompt_field, ref_prompt_field) for k in keys]


def story_cast(story: VistoryStory, with_references: bool):
    """(characters, shots) for dreamshot.story.plan_story: role k -> character "role{k}" with its
    reference image and prompt; each shot lists its roles."""
    from ..story import Character, Shot

    used = sorted({r for roles in story.roles for r in roles})
    characters = []
    if with_references:
        for r in used:
            characters.append(Character(name=role_name(r), images=load_image(story.ref_paths[r]).unsqueeze(0),
                                        description=story.ref_prompts[r]))
    shots = [Shot(prompt=p, characters=tuple(role_name(r) for r in roles)) for p, roles in zip(story.prompts,
                                                                                            story.roles)]
    return characters, shots


def to_story(story: VistoryStory):
    """The story in DreamShot's story-file form (dreamshot.story_file.Story): the roles the shots use as
    characters ``role<k>`` with their reference image and prompt, the shots with their prompts and
    roles, and no settings, so ``python -m dreamshot.generate`` runs it with the official runner's
    defaults, as ``python -m dreamshot.vistory`` does."""
    from ..story_file import Story

    characters, shots = story_cast(story, with_references=True)
    return Story(characters=tuple(characters), shots=tuple(shots), title=f"ViStoryBench {story.key}")
