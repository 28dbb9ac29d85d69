"""Errors of the compression package.

Mistakes the user can fix are `UserError`s (the CLI exits 2 with one message). A compression that ran but
produced a model we refuse to hand out is a `CompressionFailed` (exit 1, also one message): the input was
fine, the stack did not deliver.
"""

from __future__ import annotations

from scaling.errors import UserError


class CompressUserError(UserError):
    """A bad model path, option combination or recipe given to a compression command."""


class NotAModelError(CompressUserError):
    """The path is neither an HF model directory, one of our outputs, nor a training checkpoint."""


class UnsupportedError(CompressUserError):
    """A method/bits/architecture combination this stack cannot do correctly (the message says why)."""


class MissingPackageError(CompressUserError):
    """An optional package (or hardware support) a method needs is not importable here."""


class CompressionFailed(RuntimeError):
    """Compression ran but its result failed a sanity check, so nothing was written."""
