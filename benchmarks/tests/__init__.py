"""The benchmark tooling's own tests (the ladder, the harness, a whole run at a small rate):
they import the benchmarks, which tests/ never does."""
