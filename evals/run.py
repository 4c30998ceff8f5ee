"""``python -m evals.run <checkpoint> [...]``: the same as ``kanformer eval``."""

import sys

from kanformer.cli import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]])
