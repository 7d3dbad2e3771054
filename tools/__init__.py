"""Developer tools run by the Makefile, not shipped with udpchat."""
