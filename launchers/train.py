#!/usr/bin/env python
"""Per-rank training entry point for the deepspeed launcher:

    deepspeed --num_gpus 2 launchers/train.py --model tiny-gpt2 --data corpus.txt --output runs/x --max-steps 100
    deepspeed --hostfile hostfile launchers/train.py ...

The launcher appends --local_rank=N; all options are those of `scaling train`.
"""

from scaling.cli.train import train

if __name__ == "__main__":
    train(prog_name="launchers/train.py")
