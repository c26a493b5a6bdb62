"""One error type for bad user input, so the CLI can print one line and exit 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, line or field that cannot be used.

    The message is one line that names where the problem is (file, line, field),
    so a user can fix it without reading a traceback.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if file is not None:
            where.append(str(file) + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file, self.line, self.field = file, line, field


class Interrupted(Exception):
    """Ctrl-C, said in one line (exit 130) with what to do next; typer alone would exit 130 silently."""

    exit_code = 130


def decode_text(data: bytes, file: str) -> str:
    """UTF-8 with an optional BOM (Excel and Windows write one); anything else is one line naming
    the file and the byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise InputError(f"not UTF-8 text (byte {offset}: {data[offset:offset + 1]!r}); save it as UTF-8",
                         file=file) from None


def read_text(path) -> str:
    """A user's text file (config, task file, general texts) as UTF-8, BOM optional."""
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror or e})", file=str(path)) from None
    return decode_text(data, str(path))
