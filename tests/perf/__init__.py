"""Benchmarks (`make bench`) and their smoke test: scenarios B1-B6 against same-run baselines."""
