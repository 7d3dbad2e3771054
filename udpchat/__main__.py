"""``python -m udpchat``."""

import sys

from udpchat.cli import main

sys.exit(main())
