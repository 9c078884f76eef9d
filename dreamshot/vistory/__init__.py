"""ViStoryBench with the released DreamShot weights: ``python -m dreamshot.vistory`` (see __main__)."""
