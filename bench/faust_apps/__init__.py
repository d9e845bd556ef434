"""Minimal Faust apps the benchmark runs as subprocess workers (naive baseline, framework ceiling)."""
