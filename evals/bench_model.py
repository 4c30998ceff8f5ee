"""``python -m evals.bench_model``: the same as ``python -m benchmarks.bench_model``."""

from benchmarks.bench_model import main

if __name__ == "__main__":
    main()
