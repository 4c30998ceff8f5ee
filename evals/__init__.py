"""The former name of ``benchmarks/``: ``python -m evals.bench_model`` and ``python -m evals.bench_ffn`` still run."""
