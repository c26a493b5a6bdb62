"""``forgetless ARGS`` in this process (fast): exit status, stdout and stderr."""

import sys

import pytest


def run_cli(capsys, *args) -> tuple[int, str, str]:
    from forgetless.cli import main

    old = sys.argv
    sys.argv = ["forgetless", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
