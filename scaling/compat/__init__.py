"""Every private torch / DeepSpeed / transformers / INC (torchao) API this project relies on, in one place.

Each function here wraps one underscored name, internal attribute or monkeypatch of a third-party package, so
a version bump breaks here (and in tests/unit/test_compat.py, which exercises each one) instead of somewhere
deep in a training run. Modules import their third-party package lazily: importing scaling.compat is cheap.
"""
