"""The animatic (dreamshot/animatic.py), pure: frame-exact timing, each shot's first frame equal to its
keyframe, crossfades, camera moves, burned-in text, the MP4 decoded back with PyAV (frame count, rate,
first frames, a key frame at each cut, sound), never overwriting, nothing left by a cancelled write,
and memory that does not grow with the number of shots (tracemalloc)."""

from __future__ import annotations

import os
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from dreamshot.animatic import (AnimaticSettings, Board, boards_for, fit_board, move_window,  # noqa: E402
                                render_frames, write_animatic)
from dreamshot.errors import DreamShotInputError  # noqa: E402
from dreamshot.shot_timing import frame_count, shot_starts  # noqa: E402
from dreamshot.story import Shot  # noqa: E402

BARE = dict(shot_numbers=False, timecode=False, captions=False)


def smooth_keyframes(n: int, h: int = 48, w: int = 64) -> torch.Tensor:
    """Boards that compress like drawings (gradients and a flat block), each clearly its own."""
    y = torch.linspace(0, 1, h)[:, None, None]
    x = torch.linspace(0, 1, w)[None, :, None]
    out = []
    for j in range(n):
        colour = torch.tensor([(j * 0.31) % 1, (j * 0.67) % 1, (j * 0.45 + 0.2) % 1])
        img = (0.5 + 0.5 * torch.sin(6.28 * (x * (j % 5 + 1) + y * 2) + colour * 6)).expand(h, w, 3).clone()
        img[h // 4:h // 2, w // 4:w // 2] = colour
        out.append(img)
    return torch.stack(out)


def frames_of(boards, **settings) -> list[np.ndarray]:
    return [f.copy() for f in render_frames(boards, AnimaticSettings(**settings))]


def yuv420(picture) -> np.ndarray:
    """An RGB picture after the 4:2:0 round trip every H.264 frame takes (PyAV's own conversion)."""
    frame = av.VideoFrame.from_ndarray(np.asarray(picture), format="rgb24")
    return frame.reformat(format="yuv420p").reformat(format="rgb24").to_ndarray().astype(float)


def decode(path) -> tuple[list[np.ndarray], list, Fraction, object]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = Fraction(stream.average_rate)
        frames, keys = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            keys.append(f.key_frame)
        audio = c.streams.audio[0] if c.streams.audio else None
        audio_seconds = float(audio.duration * audio.time_base) if audio is not None and audio.duration else None
    return frames, keys, rate, audio_seconds


# ---------------------------------------------------------------------------------------- timing
@pytest.mark.parametrize("durations, fps", [([2.0] * 12, 24), ([0.1, 0.2, 0.3], 30), ([1.3, 0.7, 2.25, 0.04], 25),
                                            ([0.5, 0.5, 0.5], 23.976), ([1 / 3] * 9, 24)])
def test_frame_count_is_round_of_total_seconds_times_fps(durations, fps):
    rate = Fraction(round(fps * 1000), 1000)
    starts = shot_starts(durations, rate)
    assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))
    assert starts[-1] == frame_count(durations, rate) == round(sum(Fraction(repr(d)) for d in durations) * rate)
    # each cut sits at the nearest frame to its time: the error never accumulates
    t = Fraction(0)
    for d, start in zip(durations, starts[1:]):
        t += Fraction(repr(d))
        assert abs(start - t * rate) <= Fraction(1, 2)


def test_a_shot_shorter_than_a_frame_is_refused():
    with pytest.raises(DreamShotInputError, match="shot 2 lasts 0.01 s: less than one frame at 24 fps"):
        shot_starts([1.0, 0.01, 1.0], 24)
    with pytest.raises(DreamShotInputError, match="shot 1: .*not between 0"):
        shot_starts([0.0], 24)


def test_every_shot_starts_on_its_keyframe_exactly():
    keys = smooth_keyframes(4)
    boards = [Board(keys[j], d) for j, d in enumerate([0.5, 0.25, 1.0, 0.3])]
    frames = frames_of(boards, fps=24, **BARE)
    starts = shot_starts([b.duration for b in boards], 24)
    assert len(frames) == starts[-1] == round(2.05 * 24)
    for j, start in enumerate(starts[:-1]):
        still = np.asarray(fit_board(keys[j], 64, 48))
        assert np.array_equal(frames[start], still)
        assert all(np.array_equal(f, still) for f in frames[start:starts[j + 1]])   # held, no move


def test_keyframes_of_another_size_are_fitted_padded_or_cropped():
    key = smooth_keyframes(1, 48, 96)[0]          # 2:1 into 4:3
    padded = np.asarray(fit_board(key, 64, 48, "pad"))
    assert padded.shape == (48, 64, 3)
    assert padded[:8].max() == 0 and padded[-8:].max() == 0 and padded[24].max() > 0     # black bars
    cropped = np.asarray(fit_board(key, 64, 48, "crop"))
    assert cropped.shape == (48, 64, 3) and cropped[:4].max() > 0
    frames = frames_of([Board(key, 0.25)], fps=24, width=64, height=48, **BARE)
    assert np.array_equal(frames[0], padded)


def test_crossfades_keep_the_length_and_blend_around_each_cut():
    keys = smooth_keyframes(3)
    boards = [Board(keys[j], 1.0) for j in range(3)]
    cut = frames_of(boards, fps=24, **BARE)
    fade = frames_of(boards, fps=24, transition="crossfade", transition_seconds=0.25, **BARE)
    assert len(fade) == len(cut) == 72
    stills = [np.asarray(fit_board(k, 64, 48)).astype(float) for k in keys]
    # 6 frames per cut, centred: frames 21..26 and 45..50 blend; the rest are the plain stills
    blended = [i for i in range(72) if not np.array_equal(fade[i], cut[i])]
    assert blended == list(range(21, 27)) + list(range(45, 51))
    # across a fade the picture moves monotonically from one still to the next
    dist = [np.abs(fade[i] - stills[1]).mean() for i in range(20, 28)]
    assert all(b < a for a, b in zip(dist, dist[1:]))
    # a fade longer than a shot is shortened to fit inside it
    short = frames_of([Board(keys[0], 0.1), Board(keys[1], 1.0)], fps=24, transition="crossfade",
                      transition_seconds=2.0, **BARE)
    assert len(short) == round(1.1 * 24)


@pytest.mark.parametrize("camera", ["push in", "pull out", "pan left", "pan right", "tilt up", "tilt down"])
def test_camera_moves_travel_smoothly_and_stay_inside_the_still(camera):
    w, h, amount = 64, 48, 0.12
    windows = [move_window(camera, p / 10, amount, w, h) for p in range(11)]
    for zoom, x0, y0 in windows:
        assert zoom >= 1 and -1e-9 <= x0 <= w - w / zoom + 1e-9 and -1e-9 <= y0 <= h - h / zoom + 1e-9
    moved = [abs(a[0] - b[0]) + abs(a[1] - b[1]) + abs(a[2] - b[2]) for a, b in zip(windows, windows[1:])]
    assert all(m > 0 for m in moved) and moved[0] < moved[5] > moved[-1]       # slow in, slow out
    key = smooth_keyframes(1)[0]
    frames = frames_of([Board(key, 1.0, camera=camera)], fps=24, **BARE)
    assert len(frames) == 24 and not np.array_equal(frames[0], frames[-1])
    if camera == "push in":        # starts on the keyframe, ends on its centre enlarged
        assert np.array_equal(frames[0], np.asarray(fit_board(key, w, h)))
    still = frames_of([Board(key, 1.0, camera=camera)], fps=24, camera_moves=False, **BARE)
    assert all(np.array_equal(f, still[0]) for f in still)


def test_burned_in_text_changes_only_its_corners_and_band():
    keys = smooth_keyframes(2, 96, 128)
    shots = [Shot("a prompt", duration=0.5, dialogue="MIRA: Hello."), Shot("another", duration=0.5)]
    boards = boards_for(keys, shots)
    assert [b.caption for b in boards] == ["MIRA: Hello.", "another"]
    bare = frames_of(boards, fps=24, **BARE)
    dressed = frames_of(boards, fps=24, shot_numbers=True, timecode=True, captions=True)
    diff = np.any(dressed[0] != bare[0], axis=-1)
    assert diff[:24, :32].any() and diff[:24, -64:].any() and diff[-24:].any()         # number, timecode, caption
    assert not diff[30:60].any()                                                      # the middle is the board
    # the timecode ticks: consecutive frames of a still differ only in the top-right box
    tick = np.any(dressed[1] != dressed[0], axis=-1)
    assert tick.any() and not tick[:, :64].any() and not tick[30:].any()


def test_settings_are_checked_with_the_fix():
    board = [Board(smooth_keyframes(1)[0], 1.0)]
    for settings, needle in ((dict(width=63, height=48), "even number"), (dict(fps=0.5), "between 1 and 240"),
                             (dict(transition="wipe"), "unknown transition"), (dict(fit="stretch"), "unknown fit")):
        with pytest.raises(DreamShotInputError, match=needle):
            frames_of(board, **settings)
    with pytest.raises(DreamShotInputError, match="3 keyframe\\(s\\) for 2 shot"):
        boards_for(smooth_keyframes(3), [Shot("a"), Shot("b")])


# ------------------------------------------------------------------------------------------ MP4
def test_the_mp4_decodes_frame_exact_with_each_shot_opening_on_its_keyframe(tmp_path):
    keys = smooth_keyframes(4, 96, 128)
    durations = [1.0, 0.5, 0.75, 0.3]
    boards = [Board(keys[j], d) for j, d in enumerate(durations)]
    info = write_animatic(tmp_path / "a.mp4", boards, AnimaticSettings(fps=25, **BARE))
    frames, keys_flags, rate, audio = decode(info.path)
    assert rate == 25 and audio is None
    assert len(frames) == info.frames == round(sum(durations) * 25) == info.starts[-1]
    # H.264 4:2:0 keeps colour at half resolution: the best a decoded frame can be is the keyframe's own
    # round trip through yuv420p; the encoder may add little to that, and never look like another board.
    stills = [yuv420(fit_board(k, 128, 96)) for k in keys]
    for j, start in enumerate(info.starts[:-1]):
        errors = [np.abs(frames[start] - s).mean() for s in stills]
        assert errors[j] < 3 and min(e for i, e in enumerate(errors) if i != j) > 20, errors
        assert keys_flags[start]                                 # a key frame at every cut
    assert (info.width, info.height) == (128, 96)


def test_size_fps_and_sound_track(tmp_path):
    keys = smooth_keyframes(2)
    sr = 16000
    t = torch.arange(sr * 3) / sr
    audio = {"waveform": torch.stack([torch.sin(t * 2 * torch.pi * 440), torch.sin(t * 2 * torch.pi * 220)])[None],
             "sample_rate": sr}
    info = write_animatic(tmp_path / "s.mp4", [Board(keys[0], 0.5), Board(keys[1], 0.5)],
                          AnimaticSettings(fps=30, width=96, height=72), audio=audio)
    frames, _, rate, audio_seconds = decode(info.path)
    assert rate == 30 and len(frames) == 30 and frames[0].shape == (72, 96, 3) and info.audio
    assert audio_seconds is not None and abs(audio_seconds - 1.0) < 0.1         # cut to the video's second
    with pytest.raises(DreamShotInputError, match="AUDIO"):
        write_animatic(tmp_path / "bad.mp4", [Board(keys[0], 0.5)], audio={"samples": 1})


def test_never_overwrites_and_a_cancelled_write_leaves_nothing(tmp_path):
    keys = smooth_keyframes(2)
    boards = [Board(keys[0], 0.5), Board(keys[1], 0.5)]
    target = tmp_path / "a.mp4"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        write_animatic(target, boards)
    assert target.read_bytes() == b"mine"

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        assert total == 24
        if done == 10:
            raise Cancelled

    with pytest.raises(Cancelled):
        write_animatic(tmp_path / "b.mp4", boards, on_frame=cancel)
    assert sorted(os.listdir(tmp_path)) == ["a.mp4"]


def test_memory_does_not_grow_with_the_number_of_shots(tmp_path):
    """Peak Python/numpy memory (tracemalloc) while writing 3 and 12 shots of 24 frames at 160x120 with
    every per-frame path on (crossfades, moves, captions, timecode): the same, and a few frames at most,
    never a shot's frames or the video. PyAV's own buffers are not Python allocations; the frames
    DreamShot draws are."""
    frame_bytes = 160 * 120 * 3
    settings = AnimaticSettings(fps=24, width=160, height=120, transition="crossfade", captions=True)
    moves = ("static", "push in", "pan right", "tilt up")
    peaks = {}
    for n in (3, 12):
        keys = smooth_keyframes(n)
        boards = [Board(keys[j], 1.0, camera=moves[j % 4], caption=f"shot {j}") for j in range(n)]
        tracemalloc.start()
        write_animatic(tmp_path / f"m{n}.mp4", boards, settings)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[12] <= peaks[3] + frame_bytes, peaks
    assert peaks[12] < 8 * frame_bytes < 24 * frame_bytes, peaks
