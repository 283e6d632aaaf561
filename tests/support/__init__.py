"""Helpers shared by the tests and the benchmarks: real data made on the spot (shards, RL and robot
datasets, a pseudo-English corpus), a moto S3 server, a faulty proxy, and runners that check what a
CLI run leaves behind. Importable as `tests.support.*` from the repo root (pytest's `pythonpath`,
`python -m benchmarks.X`); tests' fixtures live in conftest.py and call these."""
