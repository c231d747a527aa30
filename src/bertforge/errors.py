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


def read_user_text(path: str | Path, fix_if_missing: str) -> str:
    """The text of a user's UTF-8 file (a byte-order mark is dropped), or an error naming the file and the line
    of the first bytes that are not UTF-8. ``fix_if_missing`` finishes the message for a path that is no file."""
    path = Path(path)
    if not path.is_file():
        raise BertforgeError(f"{path}: {'is not a file' if path.exists() else 'no such file'}; {fix_if_missing}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise BertforgeError(f"{where(path, line)}: not valid UTF-8 ({error.reason}); save the file as UTF-8") from None
