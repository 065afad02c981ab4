"""Benchmarks, each run as `python -m bench.<name>` from the repository root; none is a test."""
