"""Storyboard quality metrics: identity similarity (ArcFace), character confusion, cross-shot
consistency and prompt alignment (CLIP score), with models given by path and never downloaded.

- metrics.py: the definitions, pure numpy on embeddings.
- storyboard.py: one storyboard measured with a FaceAnalyzer and an optional CLIP scorer
  (shared by the CLI and the ComfyUI node).
- benchmark.py: the benchmark file (stories: references + shot scripts).
- runner.py: generated storyboards read from the ViStoryBench outputs layout.
- report.py: CSV and markdown tables.
- clip_score.py: CLIP from a local Hugging Face folder.

``python -m dreamshot.eval --help``.
"""
