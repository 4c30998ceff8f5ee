"""``python -m evals.bench_adamw``: the same as ``python -m benchmarks.bench_adamw``."""

from benchmarks.bench_adamw import main

if __name__ == "__main__":
    main()
