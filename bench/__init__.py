"""Benchmarks: figures as ratios against the machine's own limits measured in the same run."""
