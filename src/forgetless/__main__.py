import sys


def main() -> None:
    """The ``forgetless`` command: Ctrl-C while the CLI's modules load is one line too."""
    try:
        from forgetless.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
