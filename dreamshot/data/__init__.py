"""Training data from videos: ``python -m dreamshot.data VIDEOS OUT`` writes a dreamshot.train dataset.

The DreamShot paper trains on temporally coherent shot sequences cut from videos, each with a
reference frame per character, per-character masks and shot captions. This package builds that
from a folder of videos, one small step per module:

- :mod:`.video` decodes with PyAV; :mod:`.cuts` finds shot boundaries with PySceneDetect;
- :mod:`.keyframes` picks one keyframe per shot, fits it to the training size and filters
  too-short, black and near-duplicate shots;
- :mod:`.identities` clusters faces (any :class:`dreamshot.faces.FaceAnalyzer`, insightface ArcFace
  by default) into characters, chooses references and pairs them with shots;
- :mod:`.masks` makes per-character masks (pluggable ONNX / torch segmenters, or dilated boxes);
- :mod:`.captions` reads sidecar captions or calls a captioner (never invents one);
- :mod:`.writer` writes images, resumable per-sequence records, ``manifest.jsonl`` and the summary;
- :mod:`.pipeline` ties them together (:func:`build_dataset`).
"""

from .pipeline import DataConfig, Summary, build_dataset

__all__ = ["DataConfig", "Summary", "build_dataset"]
