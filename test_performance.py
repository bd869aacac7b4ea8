"""The seed's performance script, kept as a shim: ``python test_performance.py``.

Runs the fair benchmark (``memollm bench``) over short, medium and long contexts; takes the
same options (see ``python test_performance.py --help``). Not a pytest file: it only runs
when executed as a script.
"""

import sys

from memollm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
