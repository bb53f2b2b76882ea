"""Benchmarks. `python -m tools.bench.automl`: the platform's AutoML against FLAML,
H2O AutoML and a HistGradientBoosting floor (data sets in `tools.bench.suite`)."""
