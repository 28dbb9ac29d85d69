"""Checkpoints: atomic save with a commit marker, resume, retention, export to HF safetensors."""
