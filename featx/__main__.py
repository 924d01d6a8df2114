"""`python -m featx`: the same command line as the `featx` script."""

import sys

from featx.cli import main

sys.exit(main())
