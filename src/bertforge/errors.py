"""The one exception type for problems a user can fix.

The CLI prints a :class:`BertforgeError` as a single line (``bertforge: error: ...``) and exits non-zero;
anything else is a bug in bertforge and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class BertforgeError(Exception):
    """A problem with the user's input or files: the message names the file, the problem and the fix."""


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``path`` or ``path:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
