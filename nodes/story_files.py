"""Load Story and Save Story: a whole story (cast, shots, locks, title) from or to a story file
(dreamshot/story_file.py; format in docs/story-files.md)."""

import hashlib
import logging
import os

import folder_paths

from ..dreamshot.comfy_bridge.compat import io, ui
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.modes import parse_shot_list
from ..dreamshot.story_file import (Story, list_story_files, parse_settings_text, read_story, story_files_used,
                                    write_story)
from ..dreamshot.sheet import next_counter
from .errors import reported_as
from .sheet import _split_prefix
from .types import CATEGORY, Characters, Shots


log = logging.getLogger("DreamShot")


def _story_path(story: str) -> str:
    return os.path.join(folder_paths.get_input_directory(), story)


class LoadStory(io.ComfyNode):
    DISPLAY = "Load Story"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotLoadStory",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/conditioning",
            description="Reads a story file (.yaml/.yml/.json) from ComfyUI's input folder: the characters and "
                        "shots the Character Reference / Shot Script chains make, the locked shots for Shot "
                        "Sequence Pack's lock_shots and the title for the Storyboard Sheet. Image paths in the "
                        "file are relative to its folder. Format: docs/story-files.md.",
            is_experimental=True,
            inputs=[
                io.Combo.Input("story", options=list_story_files(folder_paths.get_input_directory()),
                               tooltip="A story file in ComfyUI's input folder (or a subfolder of it). Its "
                                       "images are read from paths relative to the file's folder."),
            ],
            outputs=[
                Characters.Output(display_name="characters"),
                Shots.Output(display_name="shots"),
                io.String.Output(display_name="lock_shots",
                                 tooltip='The shots marked "lock: true", as "1, 3" for Shot Sequence Pack.'),
                io.String.Output(display_name="title", tooltip="The story's title, for the Storyboard Sheet."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, story):
        """The bytes of the story file and of every image it names: editing any of them reruns."""
        digest = hashlib.sha256()
        try:
            files = story_files_used(_story_path(story), folder_paths.get_input_directory())
        except (DreamShotInputError, OSError) as e:     # execute reports it; rerun when it changes
            return f"error: {e}"
        for path in dict.fromkeys(files):     # each file once, however often the story names it
            digest.update(str(path).encode() + b"\0")
            try:
                with open(path, "rb") as f:      # in blocks: a large image is never held whole
                    while block := f.read(1 << 20):
                        digest.update(block)
            except OSError as e:
                digest.update(str(e).encode())
        return digest.hexdigest()

    @classmethod
    def execute(cls, story) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            loaded = read_story(_story_path(story), folder_paths.get_input_directory())
            given = loaded.settings.given()
            if given:   # never dropped silently: the graph's widgets and patch nodes decide instead
                log.warning("%s: %s: its settings (%s) are read by python -m dreamshot.generate only; in this graph "
                            "the nodes decide: Shot Sequence Pack (width, height, mode, negative_prompt), DreamShot "
                            "Sampler (seed, steps, cfg, ref_cfg, chunk_size, context_shots, variants), RACL "
                            "Attention Patch (racl), Shot LoRA (shot_loras).", cls.DISPLAY, story, ", ".join(given))
            if loaded.locked:
                log.info("%s: %s: shot(s) %s are locked: connect lock_shots and the earlier keyframes to Shot "
                         "Sequence Pack to keep them.", cls.DISPLAY, story, loaded.lock_text)
            return io.NodeOutput(loaded.characters, loaded.shots, loaded.lock_text, loaded.title)


class SaveStory(io.ComfyNode):
    DISPLAY = "Save Story"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotSaveStory",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/output",
            description="Writes the graph's story (characters, shots, locks, title, settings) as a YAML story file "
                        "in ComfyUI's output folder, with the reference and shot images as PNGs in a folder of "
                        "the same name beside it. Never overwrites: a counter is added. Copy both into the input "
                        "folder to load them with Load Story, or run them with python -m dreamshot.generate.",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                Shots.Input("shots", tooltip="The chained Shot Scripts, in story order."),
                Characters.Input("characters", optional=True,
                                 tooltip="The chained Character References (none for a text-only story)."),
                io.String.Input("title", default="", tooltip="The story's title (optional)."),
                io.String.Input("lock_shots", default="", optional=True,
                                tooltip='Shots to mark "lock: true", e.g. "1, 3-4" (as Shot Sequence Pack reads '
                                        "them)."),
                io.String.Input("settings", default="", multiline=True, optional=True,
                                tooltip="Optional settings for headless runs, one per line, e.g. 'width: 832', "
                                        "'height: 480', 'seed: 42', 'steps: 30', 'chunk_size: 6', 'variants: 2', "
                                        "'racl: true', or a shot_loras list (see docs/story-files.md)."),
                io.String.Input("filename_prefix", default="DreamShot/story",
                                tooltip="File name prefix inside ComfyUI's output folder; '/' makes subfolders. "
                                        "A counter is added, existing files are never overwritten."),
            ],
            outputs=[io.String.Output(display_name="path",
                                      tooltip="The story file written, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, shots, title, filename_prefix, characters=None, lock_shots="", settings="") -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            shots = tuple(shots or ())
            if not shots:
                raise DreamShotInputError("shots", "no shots were given.", "connect a Shot Script chain.")
            story = Story(characters=tuple(characters or ()), shots=shots, title=title.strip(),
                          locked=tuple(parse_shot_list(lock_shots or "", len(shots))),
                          settings=parse_settings_text(settings or ""))
            output_dir = folder_paths.get_output_directory()
            folder, stem, subfolder = _split_prefix(filename_prefix or "DreamShot/story", output_dir, 0, 0)
            os.makedirs(folder, exist_ok=True)
            start = next_counter(folder, stem, (".yaml", ""))
            for counter in range(start, start + 10000):
                path = os.path.join(folder, f"{stem}_{counter:05d}_.yaml")
                try:
                    write_story(path, story, confine=output_dir)
                    break
                except FileExistsError:
                    continue
            else:
                raise DreamShotInputError("filename_prefix", f"no free file name for {stem!r}.",
                                          "use another filename_prefix.")
            rel = os.path.relpath(path, output_dir).replace(os.sep, "/")
            return io.NodeOutput(rel, ui=ui.PreviewText(f"saved {rel}"))
