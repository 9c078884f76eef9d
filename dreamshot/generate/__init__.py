"""Headless generation of a story file: ``python -m dreamshot.generate story.yaml`` (see __main__)."""
