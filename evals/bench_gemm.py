"""``python -m evals.bench_gemm``: the same as ``python -m benchmarks.bench_gemm``."""

from benchmarks.bench_gemm import main

if __name__ == "__main__":
    main()
