"""Storyboard Animatic and Editorial Timeline: the keyframes played in time as ComfyUI's VIDEO, and
handed to an editor as an OpenTimelineIO timeline (dreamshot/animatic.py, dreamshot/timeline.py)."""

import os
import uuid
from fractions import Fraction

import comfy.model_management
import comfy.utils
import folder_paths

from ..dreamshot.animatic import FITS, TRANSITIONS, AnimaticSettings, boards_for, write_animatic
from ..dreamshot.comfy_bridge.compat import io, ui, video_from_file
from ..dreamshot.errors import DreamShotInputError
from ..dreamshot.shot_timing import DEFAULT_DURATION, MAX_DURATION, shot_starts
from ..dreamshot.timeline import available_formats, export_timeline, timeline_shots
from .errors import reported_as
from .sheet import _split_prefix
from .types import CATEGORY, Sequence

TEMP_FOLDER = "dreamshot_animatic"


def story_keyframes(keyframes, sequence, variant: int):
    """(keyframes of one storyboard, its shots or None): with a sequence, DreamShot Sampler's V x S
    keyframes are cut to variant ``variant`` (1-based)."""
    if keyframes.ndim != 4 or keyframes.shape[0] < 1:
        raise DreamShotInputError("keyframes", f"expected an IMAGE batch, got shape {tuple(keyframes.shape)}.",
                                  "connect DreamShot Sampler's keyframes.")
    if sequence is None:
        if variant != 1:
            raise DreamShotInputError("variant", f"variant {variant} needs the sequence to tell the shots apart.",
                                      "connect the Shot Sequence Pack's sequence, or set variant to 1.")
        return keyframes, None
    shots = sequence.plan.shots
    if keyframes.shape[0] % len(shots):
        raise DreamShotInputError("keyframes", f"{keyframes.shape[0]} keyframe(s) but the sequence has {len(shots)} "
                                  "shot(s).", "connect the keyframes that DreamShot Sampler made from this sequence.")
    variants = keyframes.shape[0] // len(shots)
    if not 1 <= variant <= variants:
        raise DreamShotInputError("variant", f"variant {variant} of {variants}.", f"pick 1 to {variants}.")
    return keyframes[(variant - 1) * len(shots):variant * len(shots)], shots


def _progress():
    """write_animatic's on_frame: ComfyUI's progress bar, and Cancel stops the writing."""
    bar = []

    def on_frame(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not bar:
            bar.append(comfy.utils.ProgressBar(total))
        if done % 8 == 0 or done == total:
            bar[0].update_absolute(done, total)
    return on_frame


def _common_inputs():
    return [
        Sequence.Input("sequence", optional=True,
                       tooltip="The Shot Sequence Pack output the keyframes were made from: gives each shot its "
                               "duration, camera move, dialogue/action and prompt. Without it every keyframe "
                               "lasts 'duration' seconds."),
        io.Int.Input("variant", default=1, min=1, max=64, optional=True,
                     tooltip="With DreamShot Sampler's variants (V storyboards in one batch): which one, from 1."),
        io.Float.Input("duration", default=DEFAULT_DURATION, min=0.01, max=MAX_DURATION, step=0.1, optional=True,
                       tooltip="Seconds per shot when no sequence is connected (with one, each Shot Script's "
                               "duration counts)."),
    ]


class StoryboardAnimatic(io.ComfyNode):
    DISPLAY = "Storyboard Animatic"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamShotStoryboardAnimatic",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/output",
            description="Plays the keyframes in time as a video (an animatic): each shot for its duration, with cuts "
                        "or crossfades, the shot number, caption and timecode burned in, each shot's camera move "
                        "as a slow push in, pull out, pan or tilt on the still, and an optional sound track. "
                        "Frame-exact: round(total seconds x fps) frames. Connect Save Video to save and preview "
                        "it, and the Editorial Timeline to hand it to an editor.",
            is_experimental=True,
            inputs=[
                io.Image.Input("keyframes", tooltip="One image per shot, in story order (DreamShot Sampler's "
                                                    "keyframes)."),
                io.Float.Input("fps", default=24.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frames per second of the video (24, 25, 30; 23.976 works too)."),
                io.Int.Input("width", default=0, min=0, max=7680, step=2,
                             tooltip="Video width in pixels, even; 0 = the keyframes' width."),
                io.Int.Input("height", default=0, min=0, max=7680, step=2,
                             tooltip="Video height in pixels, even; 0 = the keyframes' height."),
                io.Combo.Input("transition", options=list(TRANSITIONS), default=TRANSITIONS[0],
                               tooltip="cut: each shot starts on its keyframe. crossfade: shots dissolve into "
                                       "each other, centred on the cut (the length stays the same)."),
                io.Float.Input("transition_seconds", default=0.5, min=0.0, max=10.0, step=0.05,
                               tooltip="Length of each crossfade (shortened where a shot is shorter)."),
                io.Boolean.Input("shot_numbers", default=True, tooltip="Burn the shot number in (top left)."),
                io.Boolean.Input("captions", default=False,
                                 tooltip="Burn each shot's caption in as a subtitle: its dialogue, else its action, "
                                         "else its prompt (needs the sequence)."),
                io.Boolean.Input("timecode", default=True, tooltip="Burn the timecode in (top right), HH:MM:SS:FF."),
                io.Boolean.Input("camera_moves", default=True,
                                 tooltip="Render each shot's camera move (Shot Script's camera) on its still. Off: "
                                         "every shot is a still."),
                *_common_inputs(),
                io.Audio.Input("audio", optional=True,
                               tooltip="Optional sound track (e.g. Load Audio): cut to the video's length, AAC."),
                io.Combo.Input("fit", options=list(FITS), default=FITS[0], optional=True,
                               tooltip="Keyframes of another shape than the video: pad (the whole board, black "
                                       "bars) or crop (fill the frame, centre-cropped)."),
            ],
            outputs=[io.Video.Output(display_name="animatic",
                                     tooltip="The animatic (H.264 MP4 in ComfyUI's temp folder): connect Save Video.")],
        )

    @classmethod
    def execute(cls, keyframes, fps, width, height, transition, transition_seconds, shot_numbers, captions, timecode,
                camera_moves, sequence=None, variant=1, duration=DEFAULT_DURATION, audio=None,
                fit=FITS[0]) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            keys, shots = story_keyframes(keyframes, sequence, variant)
            boards = boards_for(keys, shots, duration)
            settings = AnimaticSettings(fps=fps, width=width, height=height, fit=fit, transition=transition,
                                        transition_seconds=transition_seconds, shot_numbers=shot_numbers,
                                        captions=captions, timecode=timecode, camera_moves=camera_moves)
            folder = os.path.join(folder_paths.get_temp_directory(), TEMP_FOLDER)
            os.makedirs(folder, exist_ok=True)
            info = write_animatic(os.path.join(folder, f"animatic_{uuid.uuid4().hex[:16]}.mp4"), boards, settings,
                                  audio=audio, on_frame=_progress())
            return io.NodeOutput(video_from_file(info.path))


def _video_rate_and_audio(video) -> tuple[Fraction, int, bool]:
    """(frame rate, frame count, has sound) of a VIDEO without decoding its pictures."""
    import av

    try:
        with av.open(video.get_stream_source(), mode="r") as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            return Fraction(stream.average_rate), int(frames), len(container.streams.audio) > 0
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise DreamShotInputError("animatic", f"cannot read this video as a file ({e}).",
                                  "connect the Storyboard Animatic's output (or a Load Video).") from e


class EditorialTimeline(io.ComfyNode):
    DISPLAY = "Editorial Timeline"

    @classmethod
    def define_schema(cls):
        have = [f".{fmt}" for fmt, ok in available_formats().items() if ok]
        return io.Schema(
            node_id="DreamShotEditorialTimeline",
            display_name=cls.DISPLAY,
            category=f"{CATEGORY}/output",
            description="Hands the storyboard to an editor: an OpenTimelineIO timeline (.otio; .edl for CMX 3600 and "
                        ".xml for Premiere/Resolve/Final Cut 7 when their adapters are installed) with one clip per "
                        "shot named by its number, its keyframe as media, its duration, and its prompt, dialogue "
                        "and action as metadata and markers; with an animatic, a second track cut from it. Saved "
                        "with the keyframes (and the animatic) in a folder beside it in ComfyUI's output folder, "
                        "paths relative, never overwriting. Formats available here: " + (", ".join(have) or "none"),
            is_experimental=True,
            is_output_node=True,
            inputs=[
                io.Image.Input("keyframes", tooltip="One image per shot, in story order (DreamShot Sampler's "
                                                    "keyframes)."),
                io.String.Input("title", default="Storyboard", tooltip="The timeline's (sequence's) name."),
                io.Float.Input("fps", default=24.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Timeline frame rate; with an animatic connected, the animatic's rate is used."),
                io.String.Input("filename_prefix", default="DreamShot/storyboard",
                                tooltip="File name prefix inside ComfyUI's output folder; '/' makes subfolders (the "
                                        "Storyboard Sheet's prefix puts the timeline beside the sheet). A counter is "
                                        "added, existing files are never overwritten."),
                *_common_inputs(),
                io.Video.Input("animatic", optional=True,
                               tooltip="The Storyboard Animatic: copied beside the keyframes and cut into a second "
                                       "video track, shot by shot."),
            ],
            outputs=[io.String.Output(display_name="path",
                                      tooltip="The .otio file written, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, keyframes, title, fps, filename_prefix, sequence=None, variant=1, duration=DEFAULT_DURATION,
                animatic=None) -> io.NodeOutput:
        with reported_as(cls.DISPLAY):
            keys, shots = story_keyframes(keyframes, sequence, variant)
            entries = timeline_shots(keys, shots, duration)
            rate = Fraction(round(fps * 1000), 1000)
            write_video = None
            if animatic is not None:
                rate, frames, sound = _video_rate_and_audio(animatic)
                expected = shot_starts([e.duration for e in entries], rate)[-1]
                if frames != expected:
                    raise DreamShotInputError(
                        "animatic", f"the animatic has {frames} frames but these shots last {expected} frames at "
                        f"{float(rate):g} fps.", "connect the Storyboard Animatic made from the same keyframes and "
                        "sequence (and variant).")

                def write_video(path, video=animatic, sound=sound):
                    video.save_to(str(path))
                    return sound
            output_dir = folder_paths.get_output_directory()
            folder, stem, _ = _split_prefix(filename_prefix or "DreamShot/storyboard", output_dir, 0, 0)
            os.makedirs(folder, exist_ok=True)
            files = export_timeline(folder, stem, title, entries, rate, write_video, root=output_dir)
            rels = {fmt: os.path.relpath(p, output_dir).replace(os.sep, "/") for fmt, p in files.timelines.items()}
            text = f"saved {', '.join(rels.values())} and {os.path.relpath(files.media, output_dir)}/"
            if files.missing:
                text += f"; not written: {', '.join('.' + m for m in files.missing)} (adapter not installed)"
            return io.NodeOutput(rels["otio"], ui=ui.PreviewText(text))
