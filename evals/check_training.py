"""``python -m evals.check_training``: the same as ``python -m benchmarks.check_training``."""

from benchmarks.check_training import main

if __name__ == "__main__":
    main()
