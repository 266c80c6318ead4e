"""`python -m batchroute` runs the command line."""

from batchroute.cli import entry

entry()
