"""`python -m bookrec`: the same as the `bookrec` command."""

import sys

from bookrec.cli import main

sys.exit(main())
