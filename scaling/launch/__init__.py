"""Multi-node launching: hostfiles, deepspeed launcher commands, preflight checks."""
