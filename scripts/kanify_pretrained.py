r"""KAN-ify a pretrained or kanformer-trained checkpoint with a fitted start; the same as `kanformer kanify`.

    python scripts/kanify_pretrained.py runs/compare/readme_cpu/runs/mlp_params-s0/final --ffn rational \
        --out runs/warmstart/gpt2_rational
    python scripts/kanify_pretrained.py <path to a BERT> --ffn rational --out runs/warmstart/minilm_rational
"""

import sys

from kanformer.cli import main

if __name__ == "__main__":
    main(["kanify", *sys.argv[1:]])
