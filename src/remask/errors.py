"""One exception type for the user's mistakes.

Anything raised as ``RemaskError`` is printed by the CLI as a single line
(``remask: error: ...``) with exit status 2, never as a traceback. The message must
name the offending input and say how to fix it.
"""

from __future__ import annotations


class RemaskError(Exception):
    """A mistake in the user's input (flags, files, checkpoints), not a bug in remask."""
