"""Ledger's benchmark suite: `python -m bench` (or `python -m bench --quick`).

Figures are printed and written to bench-results/, never asserted: each is a ratio
against a baseline measured in the same run (see docs/benchmarks.md).
"""
