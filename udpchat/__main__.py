"""``python -m udpchat`` and the ``udpchat`` script: hold stop signals first, then the CLI."""

import sys

from udpchat.signals import hold_stop_signals


def main() -> None:
    """Stop signals are held before the CLI's imports: Ctrl-C while they load is a clean stop."""
    hold_stop_signals()
    try:
        from udpchat.cli import main as cli_main  # noqa: PLC0415 - after the signals are held
    except ModuleNotFoundError as error:  # run by a Python without udpchat's packages
        sys.exit(
            f"udpchat: {sys.executable} lacks the package {error.name!r}: run 'make serve' "
            "(it builds .venv), then '.venv/bin/python -m udpchat' or '.venv/bin/udpchat'"
        )
    sys.exit(cli_main())


if __name__ == "__main__":  # not when multiprocessing's spawn imports it in a child
    main()
