"""``python -m memollm`` runs the ``memollm`` command (for environments without the script)."""

import sys

from .cli import main

sys.exit(main())
