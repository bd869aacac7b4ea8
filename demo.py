"""The seed's demo script, kept as a shim: ``python demo.py --compare --prompt "..."``.

Same flags as ``memollm generate`` (see ``python demo.py --help``).
"""

import sys

from memollm.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
