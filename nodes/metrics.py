"""Storyboard Metrics: identity similarity, confusion, consistency and CLIP score of a storyboard,
measured against the story it was made from (the Shot Sequence Pack's sequence)."""

import functools
import os

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np

from ..dreamshot.comfy_bridge.compat import io, ui
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.eval.report import shot_table, table_image
from ..dreamshot.eval.storyboard import StoryToMeasure, measure_story
from .errors import reported_as
from .types import CATEGORY, Sequence

FACE_FOLDER = "insightface"        # the folder other face packs (IPAdapter, InstantID) use too
CLIP_FOLDER = "dreamshot_clip"     # Hugging Face CLIP folders, one per model
NONE = "None"


def register_metric_folders() -> None:
    """models/insightface and models/dreamshot_clip (also from extra_model_paths.yaml)."""
    for name in (FACE_FOLDER, CLIP_FOLDER):
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=True)


def _inside(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def model_folders(kind: str, marker) -> list[str]:
    """Sub-folders (up to two levels, e.g. buffalo_l or models/buffalo_l) of every ``kind`` path holding
    a file that ``marker(name)`` accepts, as '/'-separated names relative to their base path."""
    register_metric_folders()
    found = []
    for base in folder_paths.get_folder_paths(kind):
        if not os.path.isdir(base):
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            rel = os.path.relpath(dirpath, base)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth >= 2:
                dirnames[:] = []
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if depth and _inside(dirpath, base) and any(marker(f) for f in filenames):
                found.append(rel.replace(os.sep, "/"))
    return sorted(set(found))


def resolve_model_folder(kind: str, name: str, input_name: str) -> str:
    """The real folder of a listed model name; refuses names that are not listed or lead out of the base."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts or not name.strip():
        raise DreamShotInputError(input_name, f"{name!r} is not a folder name inside models/{kind}.",
                                  f"pick one of the folders listed (they live in ComfyUI/models/{kind}).")
    for base in folder_paths.get_folder_paths(kind):
        path = os.path.join(base, *parts)
        if os.path.isdir(path):
            if not _inside(path, base):
                raise DreamShotInputError(input_name, f"'{name}' leads out of models/{kind} (a link).",
                                          f"put the model folder itself inside ComfyUI/models/{kind}.")
            return os.path.realpath(path)
    raise DreamShotInputError(input_name, f"no folder '{name}' in models/{kind} "
                              f"({', '.join(folder_paths.get_folder_paths(kind))}).",
                              f"put the model folder in ComfyUI/models/{kind} and refresh the node list.")


def face_folders() -> list[str]:
    return model_folders(FACE_FOLDER, lambda f: f.endswith(".onnx"))


def clip_folders() -> list[str]:
    return model_folders(CLIP_FOLDER, lambda f: f == "config.json")


@functools.lru_cache(maxsize=1)
def _insightface(path: str, mtime: float):
    from ..dreamshot.faces import load_insightface

    return load_insightface(path)


@functools.lru_cache(maxsize=1)
def _clip(path: str, mtime: float):
    from ..dreamshot.eval.clip_score import ClipScorer

    return ClipScorer(path, input_name="clip_model")


def load_face_model(name: str):
    """The insightface analyzer of a models/insightface folder (None for "None"); kept while unchanged."""
    if name in (None, NONE):
        return None
    path = resolve_model_folder(FACE_FOLDER, name, "face_model")
    try:
        return _insightface(path, os.path.getmtime(path))
    except DreamShotInputError as e:
        raise DreamShotInputError("face_model", e.problem, e.fix) from None


def load_clip_model(name: str):
    if name in (None, NONE):
        return None
    path = resolve_model_folder(CLIP_FOLDER, name, "clip_model")
    return _clip(path, os.path.getmtime(path))


def _to_uint8(image) -> np.ndarray:
    """One ComfyUI IMAGE [H, W, C] (0..1 float) -> RGB uint8 HxWx3."""
    arr = image.detach().float().cpu().clamp(0, 1).numpy()
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return (arr[..., :3] * 255.0).round().astype(np.uint8)


def _region_box(spec) -> tuple[float, float, float, float] | None:
    """A Shot Script region (box, or [H, W] mask) as a box; masks become their bounding box in fractions."""
    if isinstance(spec, (tuple, list)):
        return tuple(float(v) for v in spec)
    mask = np.asarray(spec.detach().float().cpu().numpy() if hasattr(spec, "detach") else spec) > 0.5
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def story_from_sequence(sequence) -> StoryToMeasure:
    """The cast (reference images), prompts, characters and boxes of a packed story."""
    plan = sequence.plan
    names = tuple(c.name for c in plan.characters)
    refs = tuple(tuple(_to_uint8(img) for img in c.images) for c in plan.characters)
    boxes = []
    for j, shot in enumerate(plan.shots):
        regions = {names.index(n): _region_box(spec) for n, spec in shot.regions if n in names}
        expected = plan.shot_characters[j]
        # Position decides only when every character of the shot has a region (else pairing by identity).
        boxes.append(regions if expected and all(regions.get(c) for c in expected) else {})
    return StoryToMeasure(id="storyboard", names=names, references=refs, prompts=tuple(s.prompt for s in plan.shots),
                          shot_characters=tuple(tuple(c) for c in plan.shot_characters), shot_boxes=tuple(boxes),
                          reference_labels=tuple(tuple(f"reference image {k + 1}" for k in range(len(r))) for r in refs),
                          kinds=tuple(c.kind for c in plan.characters))


def measure_keyframes(keyframes, sequence, analyzer, scorer):
    """The node's work: (markdown table, StoryResult). ``analyzer``: a dreamshot.faces.FaceAnalyzer."""
    if sequence is None:
        raise DreamShotInputError("sequence", "no story is connected.",
                                  "connect the Shot Sequence Pack output the keyframes were made from.")
    if analyzer is None and scorer is None:
        raise DreamShotInputError("face_model", "neither a face model nor a CLIP model is selected: nothing to "
                                  "measure.", "pick a face model (models/insightface) and/or a CLIP model "
                                  "(models/dreamshot_clip).")
    story = story_from_sequence(sequence)
    bar = comfy.utils.ProgressBar(story.num_shots)

    def on_shot(j: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(j, story.num_shots)

    images = [_to_uint8(k) for k in keyframes]
    result = measure_story(story, images, analyzer, scorer, on_shot=on_shot, input_name="sequence")
    bar.update_absolute(story.num_shots, story.num_shots)
    return shot_table(result), result


class StoryMetrics(io.ComfyNode):
    DISPLAY = "Storyboard Metrics"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotStoryMetrics",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/output",
            description="Measures a storyboard against its story: per shot and overall, how close each expected "
                        "character's face is to its reference (ArcFace), missed and confused characters, "
                        "cross-shot consistency and the CLIP score of each shot against its prompt. Scene references "
                        "(kind location / prop) have no face and are not measured. Models are "
                        "read from ComfyUI/models/insightface and models/dreamshot_clip, never downloaded.",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                io.Image.Input("keyframes", tooltip="One image per shot, in story order (DreamShot Sampler's "
                                                    "keyframes)."),
                Sequence.Input("sequence", tooltip="The Shot Sequence Pack output the keyframes were made from: "
                                                   "the characters' reference images and who is in each shot."),
                io.Combo.Input("face_model", options=[NONE] + face_folders(), default=NONE,
                               tooltip="An insightface model folder in ComfyUI/models/insightface (e.g. buffalo_l: "
                                       "detection + ArcFace .onnx; non-commercial licence). None: no identity "
                                       "metrics."),
                io.Combo.Input("clip_model", options=[NONE] + clip_folders(), default=NONE,
                               tooltip="A Hugging Face CLIP folder in ComfyUI/models/dreamshot_clip (config.json, "
                                       "model.safetensors, tokenizer, preprocessor_config.json). None: no CLIP "
                                       "score."),
            ],
            outputs=[io.String.Output(display_name="table", tooltip="The metrics as a markdown table.")],
        )

    @classmethod
    def execute(cls, keyframes, sequence, face_model=NONE, clip_model=NONE) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            analyzer = load_face_model(face_model)
            scorer = load_clip_model(clip_model)
            table, _ = measure_keyframes(keyframes, sequence, analyzer, scorer)
            # The frontend shows images on any node (text only on its own preview node): the table is
            # shown as a picture and also returned as text.
            preview = ui.PreviewImage(table_image(table), cls=cls).as_dict()
            return io.NodeOutput(table, ui={**preview, "text": (table,)})
