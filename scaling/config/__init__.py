"""Run configuration: typed sections, the resolved DeepSpeed JSON, and validation before launch."""
