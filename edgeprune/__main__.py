"""`python -m edgeprune`: the same command line as the `edgeprune` script."""

import sys

from edgeprune.cli import main

sys.exit(main())
