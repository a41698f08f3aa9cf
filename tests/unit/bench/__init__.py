"""Benchmark scripts: their pure parts."""
