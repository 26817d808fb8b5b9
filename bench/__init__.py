"""Benchmarks: ``make bench`` runs every ``bench/*.py``; each writes ``outputs/bench/<name>.json``."""
