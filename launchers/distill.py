#!/usr/bin/env python
"""Per-rank distillation entry point for the deepspeed launcher:

    deepspeed --num_gpus 2 launchers/distill.py --teacher runs/big/final --student-layers 3 --task seq-cls \
        --data train.tsv --output runs/small --max-steps 500

The launcher appends --local_rank=N; all options are those of `scaling compress distill`.
"""

from scaling.cli.distill import distill

if __name__ == "__main__":
    distill(prog_name="launchers/distill.py")
