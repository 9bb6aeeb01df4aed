"""`python -m cvgen ...` runs the `cvgen` command."""

import os

from cvgen.cli import main

if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
