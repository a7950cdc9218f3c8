"""Benchmarks: reports measured in one run, never assertions (see docs/performance.md)."""
