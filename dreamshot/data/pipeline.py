"""Videos -> dreamshot.train dataset: :func:`build_dataset` runs every step, video by video.

Per video: shots (PySceneDetect) -> keyframes and filters -> faces (any FaceAnalyzer) and captions
-> sequences of S consecutive kept shots -> per sequence: identities, references from outside
the sequence, reference-to-shot pairing, masks -> written with a record, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DreamShotInputError
from ..faces import Face, FaceAnalyzer, check_rgb
from . import keyframes as kf
from .captions import Captioner, load_sidecar
from .cuts import DETECTORS, Shot, detect_shots
from .identities import ShotPairer, choose_references, cluster_faces, pair_with_references
from .masks import Segmenter, body_box, character_mask
from .video import VideoError, find_videos, iter_frames
from .writer import DatasetWriter, video_key

log = logging.getLogger("DreamShot.data")

MISSING_CAPTION = ("drop", "empty")


@dataclass
class DataConfig:
    """Settings (CLI flags of the same names, with '-' for '_')."""

    shots: int = 4                      # shots per sequence (S)
    stride: int = 0                     # start a sequence every `stride` kept shots; 0 = S (no overlap)
    width: int = 640                    # training resolution: keyframes are scaled to cover it and centre-cropped
    height: int = 352
    detector: str = "adaptive"          # adaptive | content | histogram (PySceneDetect)
    cut_threshold: float | None = None  # None = the detector's default
    min_scene_frames: int = 8           # the detector's shortest scene
    min_shot_seconds: float = 0.5       # shorter shots are dropped (too_short)
    keyframe_candidates: int = 5        # frames compared for sharpness per shot
    black_threshold: float = 0.1        # 98th percentile luma below this (0..1) = black
    duplicate_threshold: float = 0.03   # mean thumbnail difference below this = near duplicate of the previous shot
    min_face_size: float = 16.0         # faces smaller than this (pixels, shorter side, source video) are ignored
    min_face_score: float = 0.0         # detector score threshold on top of the analyzer's own
    identity_similarity: float = 0.5    # cosine: same character across shots of a sequence
    reference_similarity: float = 0.5   # cosine: a face outside the sequence is this character
    pair_similarity: float = 0.4        # cosine: a shot face shows this reference (paper: ArcFace pairing)
    min_characters: int = 1             # sequences with fewer paired characters are dropped
    missing_caption: str = "drop"       # drop | empty: a shot without caption is dropped, or kept with ""
    body_widen: float = 2.6             # face box -> body region (see masks.body_box)
    body_above: float = 0.5
    body_below: float = 5.0

    def validate(self) -> "DataConfig":
        def bad(name, problem, fix):
            raise DreamShotInputError(name, problem, fix)

        if self.shots < 1:
            bad("shots", f"{self.shots} shots per sequence.", "use 1 or more (the paper's sequences hold a few shots).")
        if self.stride < 0:
            bad("stride", f"{self.stride} is negative.", "use 0 (= shots) or a positive number.")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v < 16 or v % 16:
                bad(name, f"{v} is not a multiple of 16 (at least 16).", "use the training size, e.g. 640x352.")
        if self.detector not in DETECTORS:
            bad("detector", f"unknown shot detector {self.detector!r}.", f"use one of {', '.join(DETECTORS)}.")
        if self.min_characters < 0:
            bad("min_characters", f"{self.min_characters} is negative.", "use 0 (keep sequences without characters) "
                "or more.")
        if self.missing_caption not in MISSING_CAPTION:
            bad("missing_caption", f"{self.missing_caption!r}.", "use drop or empty.")
        for name in ("identity_similarity", "reference_similarity", "pair_similarity"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                bad(name, f"{getattr(self, name)} is not a cosine similarity.", "use a value in -1..1.")
        return self


@dataclass
class Summary:
    """Counts over every video of the output folder, by what was kept and why the rest was dropped."""

    counts: dict[str, Counter] = field(default_factory=dict)
    sequences_written: int = 0   # this run
    sequences_resumed: int = 0   # found finished from an earlier run

    def add(self, group: str, key: str, n: int = 1) -> None:
        if n:
            self.counts.setdefault(group, Counter())[key] += n

    def merge(self, stats: dict) -> None:
        for group, items in stats.items():
            for key, n in items.items():
                self.add(group, key, n)

    def as_dict(self) -> dict:
        return {g: dict(sorted(c.items())) for g, c in sorted(self.counts.items())}

    def lines(self) -> list[str]:
        return [f"{g}: " + ", ".join(f"{k} {n}" for k, n in sorted(c.items())) for g, c in sorted(self.counts.items())]


@dataclass
class ShotData:
    shot: Shot
    keyframe: int
    image: np.ndarray                                     # fitted to the training size
    faces: list[tuple[Face, tuple | None]]                 # (face in source pixels, box in fitted pixels or None)
    caption: str | None


@dataclass
class Plan:
    """One sequence, decided before its reference frames are decoded."""

    seq_id: str
    shots: list[ShotData]
    references: list[tuple[int, Face, str]]               # per character: (pool position, face, "outside"|"inside")
    paired: list[dict[int, tuple[tuple, float]]]           # per shot: character -> (fitted body box, similarity)


class Pipeline:
    def __init__(self, config: DataConfig, faces: FaceAnalyzer, segmenter: Segmenter | None = None,
                 reference_segmenter: Segmenter | None = None, captioner: Captioner | None = None,
                 pairer: ShotPairer | None = None):
        self.cfg = config.validate()
        if not callable(getattr(faces, "detect", None)):
            raise DreamShotInputError("faces", f"{faces!r} has no detect(image) method.",
                                      "pass a dreamshot.faces.FaceAnalyzer (e.g. load_insightface(folder)).")
        self.faces = faces
        self.segmenter = segmenter
        self.reference_segmenter = reference_segmenter
        self.captioner = captioner
        self.pairer = pairer

    def settings(self) -> dict:
        return {**dataclasses.asdict(self.cfg), "faces": getattr(self.faces, "name", type(self.faces).__name__),
                "segmenter": getattr(self.segmenter, "name", None),
                "reference_segmenter": getattr(self.reference_segmenter, "name", None),
                "captioner": None if self.captioner is None else getattr(self.captioner, "name", "callable"),
                "pairer": None if self.pairer is None else getattr(self.pairer, "name", "callable")}

    # -- per video ------------------------------------------------------------------------------
    def analyse(self, video: Path, stats: dict[str, Counter]) -> tuple[list[Shot], list[ShotData], tuple[int, int]]:
        """Shots, the shots that pass the filters (with keyframe, faces, caption), and the frame size."""
        cfg = self.cfg
        shots = detect_shots(video, cfg.detector, cfg.cut_threshold, cfg.min_scene_frames)
        stats["shots"]["detected"] += len(shots)
        long_enough = []
        for s in shots:
            if s.frames / s.fps < cfg.min_shot_seconds:
                stats["shots"]["too_short"] += 1
            else:
                long_enough.append(s)
        candidates = {s.index: kf.candidate_frames(s, cfg.keyframe_candidates) for s in long_enough}
        owner = {i: s for s in long_enough for i in candidates[s.index]}
        sidecar = load_sidecar(video)
        pool: list[ShotData] = []
        size = (0, 0)
        fit = None
        previous = None
        got: dict[int, np.ndarray] = {}
        decoded: set[int] = set()
        # Frames stream in order; a shot is handled as soon as its last candidate arrives, so only
        # one shot's candidates are ever held at full resolution.
        for i, rgb in iter_frames(video, owner):
            s = owner[i]
            got[i] = rgb
            if i != candidates[s.index][-1]:
                continue
            frames, got = got, {}
            decoded.add(s.index)
            if fit is None:
                size = (rgb.shape[1], rgb.shape[0])
                fit = kf.Fit.cover(size[0], size[1], cfg.width, cfg.height)
            key = kf.pick_keyframe(s, frames)
            rgb = check_rgb(frames[key], "video frame")
            if kf.is_black(rgb, cfg.black_threshold):
                stats["shots"]["black"] += 1
                continue
            thumb = kf.thumbnail(rgb)
            if previous is not None and kf.near_duplicate(thumb, previous, cfg.duplicate_threshold):
                stats["shots"]["near_duplicate"] += 1
                continue
            previous = thumb
            faces = [f for f in self.faces.detect(rgb)
                     if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= cfg.min_face_size
                     and f.score >= cfg.min_face_score]
            image = fit.image(rgb)
            caption = sidecar.caption(s, key)
            if not caption and self.captioner is not None:
                caption = self.captioner(image, {"video": str(video), "shot": s.index,
                                                 "start_s": s.start_s, "end_s": s.end_s})
            caption = caption.strip() if isinstance(caption, str) else None
            pool.append(ShotData(s, key, image, [(f, fit.box(f.box)) for f in faces], caption or None))
        stats["shots"]["undecodable"] += len(long_enough) - len(decoded)
        return shots, pool, size

    def windows(self, pool: list[ShotData], stats: dict[str, Counter]) -> list[list[int]]:
        """Sequences as positions in ``pool``: S consecutive shots that have captions (or may go without)."""
        usable = []
        for i, sd in enumerate(pool):
            if sd.caption is None and self.cfg.missing_caption == "drop":
                stats["shots"]["no_caption"] += 1
                continue
            if sd.caption is None:
                stats["shots"]["empty_caption"] += 1
            usable.append(i)
        s, stride = self.cfg.shots, self.cfg.stride or self.cfg.shots
        wins = [usable[i:i + s] for i in range(0, len(usable) - s + 1, stride)]
        covered = {i for w in wins for i in w}
        stats["shots"]["not_in_a_sequence"] += len(set(usable) - covered)
        return wins

    def plan(self, key: str, pool: list[ShotData], window: list[int], stats: dict[str, Counter]) -> Plan | None:
        cfg = self.cfg
        shots = [pool[i] for i in window]
        visible = [[(f, b) for f, b in sd.faces if b is not None] for sd in shots]
        embs = [np.stack([f.embedding for f, _ in v]) if v else np.zeros((0, 1), np.float32) for v in visible]
        identities = cluster_faces(embs, cfg.identity_similarity)
        seq_id = f"{key}_{shots[0].shot.index:04d}"
        if len(identities) < cfg.min_characters:
            stats["sequences"]["too_few_characters"] += 1
            return None
        if not identities:  # allowed with min_characters 0: a sequence for text-to-shot training
            return Plan(seq_id, shots, [], [{} for _ in shots])
        outside = [(p, f) for p, sd in enumerate(pool) if p not in window for f, _ in sd.faces]
        chosen = choose_references(np.stack([i.centroid for i in identities]),
                                   np.stack([f.embedding for _, f in outside]) if outside else np.zeros((0, 1)),
                                   cfg.reference_similarity)
        references = []
        for ident, pick in zip(identities, chosen):
            if pick is not None:
                references.append((outside[pick][0], outside[pick][1], "outside"))
            else:  # no face elsewhere in the video: its largest face inside the sequence
                s, f = max(ident.members, key=lambda m: _area(visible[m[0]][m[1]][0].box))
                references.append((window[s], visible[s][f][0], "inside"))
        ref_embs = np.stack([f.embedding for _, f, _ in references])
        paired: list[dict[int, tuple[tuple, float]]] = []
        for v, sd in zip(visible, shots):
            found: dict[int, tuple[tuple, float]] = {}
            if v:
                match, sim = pair_with_references(np.stack([f.embedding for f, _ in v]), ref_embs, cfg.pair_similarity)
                for fi, c in enumerate(match):
                    if c is not None:
                        found[c] = (v[fi][1], float(sim[fi, c]))
            paired.append(found)
        return Plan(seq_id, shots, references, paired)

    def reference_crops(self, video: Path, pool: list[ShotData], plans: list[Plan]) -> dict[tuple, np.ndarray]:
        """The references' body crops from the full-resolution frames, keyed (frame, face box);
        decoded in one pass, keeping crops rather than whole frames."""
        needed: dict[int, list[Face]] = {}
        for p in plans:
            for pos, face, _ in p.references:
                needed.setdefault(pool[pos].keyframe, []).append(face)
        return {(i, face.box): _reference_crop(rgb, face, self.cfg)
                for i, rgb in iter_frames(video, needed) for face in needed[i]}

    def write(self, writer: DatasetWriter, key: str, rel: str, plan: Plan, pool: list[ShotData],
              ref_crops: dict[tuple, np.ndarray], stats: dict[str, Counter]) -> dict | None:
        cfg = self.cfg
        folder = f"{key}/{plan.seq_id}"
        n_chars = len(plan.references)
        ref_images: dict[int, np.ndarray] = {}
        ref_prov: dict[int, dict] = {}
        for c, (pos, face, where) in enumerate(plan.references):
            ref_images[c] = ref_crops[(pool[pos].keyframe, face.box)]
            ref_prov[c] = {"video_frame": pool[pos].keyframe, "shot": pool[pos].shot.index, "from": where,
                           "box": [round(x, 1) for x in face.box]}
        # the hook for characters without faces (e.g. a VLM) sees the references by id
        cids = [f"char{c}" for c in range(n_chars)]
        extra: list[dict[int, tuple | None]] = [{} for _ in plan.shots]
        if self.pairer is not None:
            for j, sd in enumerate(plan.shots):
                present = [cids[c] for c in plan.paired[j]]
                proposed = self.pairer(sd.image, {cids[c]: ref_images[c] for c in range(n_chars)}, present) or {}
                for cid, box in proposed.items():
                    if cid in cids and cids.index(cid) not in plan.paired[j]:
                        extra[j][cids.index(cid)] = box
        appears = {c for j in range(len(plan.shots)) for c in (*plan.paired[j], *extra[j])}
        for c in range(n_chars):
            if c not in appears:
                stats["characters"]["never_paired"] += 1
        if len(appears) < cfg.min_characters:
            stats["sequences"]["too_few_characters"] += 1
            return None
        keep = sorted(appears)
        ids = {c: f"char{k}" for k, c in enumerate(keep)}   # renumbered over the characters kept
        characters = {}
        for c in keep:
            cid = ids[c]
            ref_rel = writer.write_image(f"{folder}/ref_{cid}.png", ref_images[c])
            mask_rel = None
            ref_prov[c]["mask_source"] = "none"
            if self.reference_segmenter is not None:
                h, w = ref_images[c].shape[:2]
                m, _ = character_mask(ref_images[c], (0.0, 0.0, float(w), float(h)), self.reference_segmenter)
                mask_rel = writer.write_mask(f"{folder}/ref_{cid}_mask.png", m)
                ref_prov[c]["mask_source"] = "segmenter"
            characters[cid] = {"name": cid, "reference": ref_rel, "mask": mask_rel}
        shots_out, shots_prov = [], []
        for j, sd in enumerate(plan.shots):
            img_rel = writer.write_image(f"{folder}/shot_{j:02d}.png", sd.image)
            present, masks, sources, sims = [], {}, {}, {}
            for c in sorted((*plan.paired[j], *extra[j])):
                cid = ids[c]
                present.append(cid)
                if c in plan.paired[j]:
                    face_box, sims[cid] = plan.paired[j][c]
                    region = body_box(face_box, cfg.width, cfg.height, cfg.body_widen, cfg.body_above, cfg.body_below)
                    pairing = "face"
                else:
                    region, pairing = extra[j][c], "hook"
                if region is None:
                    sources[cid] = "none"
                    continue
                m, source = character_mask(sd.image, tuple(float(x) for x in region), self.segmenter)
                masks[cid] = writer.write_mask(f"{folder}/shot_{j:02d}_{cid}.png", m)
                sources[cid] = source if pairing == "face" else f"hook_{source}"
            shots_out.append({"image": img_rel, "caption": sd.caption or "", "characters": present, "masks": masks})
            shots_prov.append({"shot": sd.shot.index, "frames": [sd.shot.start, sd.shot.end],
                               "keyframe": sd.keyframe, "mask_source": sources,
                               "pair_similarity": {k: round(v, 4) for k, v in sims.items()}})
        entry = {"id": plan.seq_id, "shots": shots_out, "characters": characters}
        provenance = {"video": rel, "video_key": key, "first_shot": plan.shots[0].shot.index,
                      "shots": shots_prov, "characters": {ids[c]: ref_prov[c] for c in keep}}
        return writer.finish_sequence(plan.seq_id, entry, provenance)


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _reference_crop(frame: np.ndarray, face: Face, cfg: DataConfig) -> np.ndarray:
    """The character's body region cut from the full-resolution frame, at most the training size."""
    from PIL import Image

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in body_box(face.box, w, h, cfg.body_widen, cfg.body_above, cfg.body_below))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    crop = frame[y0:y1, x0:x1]
    scale = min(1.0, cfg.width / crop.shape[1], cfg.height / crop.shape[0])
    if scale < 1.0:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC))
    return np.ascontiguousarray(crop)


def _record_stats(record: dict, stats: dict[str, Counter]) -> None:
    """Counts for one written sequence, from its record (so resumed sequences count the same)."""
    stats["sequences"]["kept"] += 1
    prov = record["provenance"]
    for c in prov["characters"].values():
        stats["characters"]["kept"] += 1
        stats["characters"][f"reference_{c['from']}_sequence"] += 1
        stats["reference_masks"][c["mask_source"]] += 1
    for s in prov["shots"]:
        stats["shots"]["kept"] += 1
        for source in s["mask_source"].values():
            stats["shot_masks"][source] += 1


def build_dataset(videos: str | Path, out: str | Path, config: DataConfig | None = None, *,
                  faces: FaceAnalyzer, segmenter: Segmenter | None = None,
                  reference_segmenter: Segmenter | None = None, captioner: Captioner | None = None,
                  pairer: ShotPairer | None = None, progress: bool = True) -> Summary:
    """Turn every video under ``videos`` into sequences in ``out`` (resumable); returns the summary.

    ``faces`` finds and embeds faces (``dreamshot.faces.load_insightface(folder)`` for real video).
    ``segmenter`` makes shot masks (box-prompted), ``reference_segmenter`` reference saliency masks;
    without them shot masks are body boxes (``mask_source: box`` in the records) and references
    get no mask. ``captioner`` fills shots the sidecar file does not caption; ``pairer`` is the
    hook for characters without a visible face.
    """
    from tqdm.auto import tqdm

    videos, out = Path(videos).expanduser(), Path(out).expanduser()
    if not videos.is_dir():
        raise DreamShotInputError("videos", f"'{videos}' is not a folder.", "give the folder that holds the videos.")
    if out.resolve() == videos.resolve():
        raise DreamShotInputError("out", "the output folder is the videos folder.", "write the dataset elsewhere.")
    files = find_videos(videos)
    if not files:
        raise DreamShotInputError("videos", f"no video files in '{videos}'.",
                                  "put .mp4/.mov/.mkv/.avi/.webm files there (subfolders are searched).")
    pipe = Pipeline(config or DataConfig(), faces, segmenter, reference_segmenter, captioner, pairer)
    writer = DatasetWriter(out, pipe.settings())
    summary = Summary()
    keys = []
    bar = tqdm(files, desc="videos", unit="video", disable=not progress)
    for video in bar:
        rel = video.relative_to(videos).as_posix()
        key = video_key(rel)
        keys.append(key)
        bar.set_postfix_str(rel[-40:])
        done = writer.video_record(key)
        if done is not None:
            summary.add("videos", "resumed")
            summary.merge(done["stats"])
            continue
        stats: dict[str, Counter] = {g: Counter() for g in ("shots", "sequences", "characters", "shot_masks",
                                                           "reference_masks")}
        try:
            shots, pool, _ = pipe.analyse(video, stats)
        except VideoError as e:
            log.warning("skipping %s: %s", rel, e)
            summary.add("videos", "unreadable")
            continue
        wins = pipe.windows(pool, stats)
        plans = []
        for w in wins:
            p = pipe.plan(key, pool, w, stats)
            if p is not None:
                plans.append(p)
        todo = [p for p in plans if writer.sequence_record(p.seq_id) is None]
        try:
            ref_crops = pipe.reference_crops(video, pool, todo)
        except VideoError as e:
            log.warning("skipping %s: %s", rel, e)
            summary.add("videos", "unreadable")
            continue
        written = []
        for p in tqdm(plans, desc=f"sequences {rel[-30:]}", unit="seq", leave=False, disable=not progress):
            record = writer.sequence_record(p.seq_id)
            if record is not None:
                summary.sequences_resumed += 1
            else:
                record = pipe.write(writer, key, rel, p, pool, ref_crops, stats)
                if record is None:
                    continue
                summary.sequences_written += 1
            _record_stats(record, stats)
            written.append(p.seq_id)
        plain = {g: {k: n for k, n in sorted(c.items()) if n} for g, c in stats.items()}
        plain = {g: c for g, c in plain.items() if c}
        writer.finish_video(key, {"video": rel, "stats": plain, "sequences": written,
                                  "shots": [{"index": s.index, "frames": [s.start, s.end],
                                             "seconds": [round(s.start_s, 3), round(s.end_s, 3)]} for s in shots]})
        writer.rebuild_manifest(keys)
        summary.add("videos", "processed")
        summary.merge(plain)
    total = writer.rebuild_manifest(keys)
    writer.write_summary({"sequences_in_manifest": total, "this_run": {
        "sequences_written": summary.sequences_written, "sequences_resumed": summary.sequences_resumed,
        "videos_resumed": summary.counts.get("videos", {}).get("resumed", 0)}, **summary.as_dict()})
    return summary
