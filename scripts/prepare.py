"""Tokenize a text source into token shards on disk (the same as ``kanformer prepare``).

    python scripts/prepare.py --config configs/gpt2_small_gpu.yaml
    python scripts/prepare.py files:corpus/*.jsonl --out data/corpus data.tokenizer=gpt2 --num-proc 16
"""

import sys

from kanformer.cli import main

if __name__ == "__main__":
    main(["prepare", *sys.argv[1:]])
