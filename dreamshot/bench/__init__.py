"""Speed and memory benchmarks: ``python -m dreamshot.bench`` (a script, never a timed test)."""
