"""``python -m evals.bench_ffn``: the same as ``python -m benchmarks.bench_ffn``."""

from benchmarks.bench_ffn import main

if __name__ == "__main__":
    main()
