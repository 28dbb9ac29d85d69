"""scaling: train Hugging Face language models at scale with DeepSpeed, then compress them."""

__version__ = "0.1.0"
