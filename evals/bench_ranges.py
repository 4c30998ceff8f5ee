"""``python -m evals.bench_ranges``: the same as ``python -m benchmarks.bench_ranges``."""

from benchmarks.bench_ranges import main

if __name__ == "__main__":
    main()
