r"""Scaling sweeps: arms x sizes x seeds, fitted scaling laws, plots (the same as ``kanformer sweep``).

    python scripts/sweep.py --config configs/sweeps/cpu_ladder.yaml               # run in-process, then report
    python scripts/sweep.py --config configs/sweeps/gpu_ladder.yaml --emit commands.sh \
        --accelerate-config configs/accelerate/multi_gpu_ddp_bf16.yaml world_size=8   # one launch line per run
    python scripts/sweep.py --config configs/sweeps/gpu_ladder.yaml --report      # fit what has finished
"""

import sys

from kanformer.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
