"""``python -m udpchat`` and the ``udpchat`` script: hold stop signals first, then the CLI."""

import sys

from udpchat.signals import hold_stop_signals


def main() -> None:
    """Stop signals are held before the CLI's imports: Ctrl-C while they load is a clean stop."""
    hold_stop_signals()
    from udpchat.cli import main as cli_main  # noqa: PLC0415 - after the signals are held

    sys.exit(cli_main())


if __name__ == "__main__":  # not when multiprocessing's spawn imports it in a child
    main()
