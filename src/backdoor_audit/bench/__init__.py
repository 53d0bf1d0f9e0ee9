"""Benchmarks the tool runs itself (`audit bench ...`): repair methods over a model zoo."""
