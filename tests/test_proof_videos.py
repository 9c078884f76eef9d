"""The video prior's clips (dreamshot.proof.videos): who moves where, what the caption says, and the
manifest the trainer reads. No ComfyUI needed."""

from __future__ import annotations

import re

import numpy as np

from dreamshot.proof import dataset as ds
from dreamshot.proof import videos as vd
from dreamshot.shapes import SHAPE_CAST, classify_region

W, H = 96, 48


def test_clips_follow_their_caption_and_keep_who_is_who():
    clips = vd.make_clips(80, 0, W, H)
    seen_actions = set()
    for spec in clips:
        assert spec.frames in vd.FRAME_COUNTS and 1 <= len(spec.tracks) <= 3
        assert len({t.role for t in spec.tracks}) == len({t.character for t in spec.tracks}) == len(spec.tracks)
        # the caption names every character by role, and says nothing about what it looks like
        words = re.findall(r"[A-Za-z]+", spec.caption)
        assert set(words) <= set(ds.ROLES) | set(ds.SLOTS) | set(vd.WORDS) | {"at"}, spec.caption
        assert {t.role for t in spec.tracks} <= set(words)
        seen_actions |= {w for w in words if w in vd.WORDS}
        for t in range(spec.frames):
            boxes = [spec.box(tr, t, W, H) for tr in spec.tracks]
            if t % 4 == 0:   # the frames the latent keeps: the classifier reads each character where it is
                image = vd.render_frame(spec, t, W, H)
                for tr, box in zip(spec.tracks, boxes):
                    if spec.visible(tr, t, W, H):
                        assert classify_region(image, box)[0] == tr.character
            for a in range(len(boxes)):         # characters never overlap: every frame is unambiguous
                for b in range(a + 1, len(boxes)):
                    assert boxes[a][2] <= boxes[b][0] or boxes[b][2] <= boxes[a][0]
        # a character that leaves or enters is out of view at the end or the start
        for tr in spec.tracks:
            phrase = next((c for c in spec.caption.rstrip(".").split(", ") if c.startswith(tr.role)), "")
            if " enters " in phrase:
                assert not spec.visible(tr, 0, W, H) and spec.visible(tr, spec.frames - 1, W, H)
            if " leaves " in phrase:
                assert spec.visible(tr, 0, W, H) and not spec.visible(tr, spec.frames - 1, W, H)
            if " at " in phrase:
                assert len(set(tr.xs)) == 1
    assert seen_actions == {"enters", "from", "leaves", "to", "moves", "meets"}
    # role names are drawn per clip: a name stands for many characters over the clips
    chars_of = {r: {t.character for c in clips for t in c.tracks if t.role == r} for r in ds.ROLES}
    assert all(len(v) == len(SHAPE_CAST) for v in chars_of.values()), chars_of
    assert vd.make_clips(5, 3, W, H) == vd.make_clips(5, 3, W, H)


def test_video_manifest_is_read_by_the_trainer(tmp_path):
    from PIL import Image

    from dreamshot.train.dataset import read_manifest

    clips = vd.make_clips(4, 1, W, H)
    root = vd.write_videos(tmp_path / "videos", clips, W, H)
    seqs = read_manifest(root)
    assert [s.id for s in seqs] == [c.id for c in clips]
    for seq, spec in zip(seqs, clips):
        assert seq.is_video and len(seq.shots) == 1 and not seq.characters
        clip = seq.shots[0]
        assert clip.caption == spec.caption and len(clip.frames) == spec.frames and clip.image == clip.frames[0]
        assert seq.files()[:spec.frames] == list(clip.frames)
        last = np.asarray(Image.open(root / clip.frames[-1]))
        assert np.array_equal(last, vd.render_frame(spec, spec.frames - 1, W, H))
