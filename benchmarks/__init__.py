"""`make bench`'s benchmarks, run from the repo root as modules (`python -m benchmarks.bench_rl`), so
they import the shared test data makers as `tests.support.*` without touching sys.path."""
