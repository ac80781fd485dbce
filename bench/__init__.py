"""Benchmarks: run as scripts (python3 -m bench.NAME); they print figures and ratios, never assert timings."""
