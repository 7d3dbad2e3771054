"""``python -m udpchat``."""

import sys

from udpchat.runtime import hold_stop_signals

if __name__ == "__main__":  # not when multiprocessing's spawn imports it in a child
    hold_stop_signals()  # before the CLI's imports: Ctrl-C while they load is a clean stop
    from udpchat.cli import main

    sys.exit(main())
