#!/usr/bin/env python
"""Per-rank training entry point for the deepspeed launcher, kept for `deepspeed launchers/train.py` users:

    deepspeed --num_gpus 2 launchers/train.py --model tiny-gpt2 --data corpus.txt --output runs/x --max-steps 100
    deepspeed --hostfile hostfile launchers/train.py ...

It is `python -m scaling.rank train ...` (which also works from an installed package: `deepspeed --module
scaling.rank train ...`). The launcher appends --local_rank=N; all options are those of `scaling train`.
"""

import sys

from scaling.rank import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="launchers/train.py")
