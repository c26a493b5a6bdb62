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
