"""``python -m udpchat``."""

import sys

from udpchat.cli import main

if __name__ == "__main__":  # not when multiprocessing's spawn imports it in a child
    sys.exit(main())
