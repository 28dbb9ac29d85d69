#!/usr/bin/env python
"""Per-rank distillation entry point for the deepspeed launcher, kept for `deepspeed launchers/distill.py` users:

    deepspeed --num_gpus 2 launchers/distill.py --teacher runs/big/final --student-layers 3 --task seq-cls \
        --data train.tsv --output runs/small --max-steps 500

It is `python -m scaling.rank distill ...` (from an installed package: `deepspeed --module scaling.rank distill
...`). The launcher appends --local_rank=N; all options are those of `scaling compress distill`.
"""

import sys

from scaling.rank import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]], prog_name="launchers/distill.py")
