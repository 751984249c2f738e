"""Benchmarks (pytest-benchmark): one file per stage, each against a named baseline.
Run with `make bench`; figures go into benches/RESULTS.md with the machine they ran on."""
