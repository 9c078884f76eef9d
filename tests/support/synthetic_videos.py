"""Generated test videos: shape characters (dreamshot.shapes) moving over backgrounds, with known cuts.

Each shot has its own background and cast; the characters drift slowly so frames differ within a
shot. The truth (cut frames, who is where in every frame, their exact masks) is re-rendered on
demand. Also here: tiny segmenters for the segmenter-plugin tests (a torch module loaded from
safetensors, an ONNX graph built with the onnx package) and plugin factories the CLI imports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dreamshot.shapes import SHAPE_CAST, ShapeAnalyzer, render_scene

CAST = {c.id: c for c in SHAPE_CAST}


@dataclass(frozen=True)
class ShotSpec:
    frames: int
    cast: tuple[str, ...] = ()
    background: int = 0
    black: bool = False
    grain: float = 0.0       # extra per-pixel noise: the same picture with different fine texture


@dataclass
class SyntheticVideo:
    path: Path
    shots: list[ShotSpec]
    width: int = 96
    height: int = 64
    fps: int = 12
    starts: list[int] = field(default_factory=list)

    @property
    def cuts(self) -> list[int]:
        """First frame of every shot after the first."""
        return self.starts[1:]

    def shot_at(self, frame: int) -> int:
        return max(i for i, s in enumerate(self.starts) if s <= frame)

    def placements(self, frame: int):
        j = self.shot_at(frame)
        spec = self.shots[j]
        t = (frame - self.starts[j]) / max(spec.frames - 1, 1)
        size = round(self.height * 0.4)
        out = []
        for k, cid in enumerate(spec.cast):
            cx = self.width * (k + 1) / (len(spec.cast) + 1) + (t - 0.5) * 6 * (1 if k % 2 else -1)
            cy = self.height * 0.55 + (t - 0.5) * 3
            out.append((CAST[cid], (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)))
        return out

    def render(self, frame: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The frame as written (before compression) and each character's true mask."""
        j = self.shot_at(frame)
        spec = self.shots[j]
        if spec.black:
            return np.zeros((self.height, self.width, 3), np.uint8), {}
        placements = self.placements(frame)
        image, masks = render_scene(self.width, self.height, placements, background_seed=spec.background)
        if spec.grain:
            rng = np.random.default_rng(1000 * j + frame)
            image = np.clip(image + rng.normal(0, spec.grain, image.shape), 0, 255).astype(np.uint8)
        return image, {who.id: m for (who, _), m in zip(placements, masks)}


def write_video(path: Path, shots: list[ShotSpec], width: int = 96, height: int = 64, fps: int = 12,
                crf: int = 10) -> SyntheticVideo:
    """Encode the shots with PyAV (H.264, yuv420p) and return the video with its truth."""
    import av

    video = SyntheticVideo(Path(path), list(shots), width, height, fps)
    start = 0
    for s in shots:
        video.starts.append(start)
        start += s.frames
    video.path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(video.path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # one encoder thread: x264's output depends on its thread count (frame threads, lookahead), so
        # a machine with more cores would encode other bytes; with one the fixtures are the same everywhere
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": "1000", "bf": "0", "threads": "1"}
        for i in range(start):
            frame = av.VideoFrame.from_ndarray(video.render(i)[0], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return video


# -- plugins for the tests ------------------------------------------------------------------------
class SlowShapeAnalyzer(ShapeAnalyzer):
    """ShapeAnalyzer that takes its time, so a test can kill the CLI mid-run."""

    def detect(self, image):
        time.sleep(0.1)
        return super().detect(image)


class SaturationSegmenter(torch.nn.Module):
    """A tiny torch segmenter: saturated pixels (the shape characters) inside the box prompt."""

    def __init__(self):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.tensor(0.0))
        self.gain = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, image: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        sat = image.amax(1, keepdim=True) - image.amin(1, keepdim=True)
        mask = torch.sigmoid((sat - self.threshold) * self.gain)
        if box is not None:
            h, w = image.shape[-2:]
            ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
            xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
            x0, y0, x1, y1 = box[0]
            mask = mask * ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).float()
        return mask


def saturation_onnx(path: Path, threshold: float = 0.25, gain: float = 40.0) -> Path:
    """An ONNX segmenter (built with the onnx package): sigmoid(gain x (saturation - threshold)).

    It takes no box input, like a saliency model; the pipeline restricts it to each character's region.
    """
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMax", ["image"], ["hi"], axes=[1], keepdims=1),
        helper.make_node("ReduceMin", ["image"], ["lo"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["hi", "lo"], ["sat"]),
        helper.make_node("Sub", ["sat", "threshold"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes, "saturation_segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "H", "W"])],
        initializer=[helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold]),
                     helper.make_tensor("gain", TensorProto.FLOAT, [], [gain])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def identity_captioner():
    """A captioner factory for the CLI: names the shape characters it sees (from the shot's pixels)."""
    from dreamshot.shapes import classify_region

    analyzer = ShapeAnalyzer()

    def caption(image, info):
        names = []
        for f in analyzer.detect(image):
            k, _ = classify_region(image, f.box)
            if k is not None:
                names.append(SHAPE_CAST[k].name)
        return " and ".join(sorted(set(names))) + " on screen." if names else None

    return caption
