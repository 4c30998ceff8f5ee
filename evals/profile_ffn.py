"""``python -m evals.profile_ffn``: the same as ``python -m benchmarks.profile_ffn``."""

from benchmarks.profile_ffn import main

if __name__ == "__main__":
    main()
