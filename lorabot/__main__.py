"""`python -m lorabot …` is the same as the `lorabot` command."""

import sys

from lorabot.cli import app

sys.exit(app())
