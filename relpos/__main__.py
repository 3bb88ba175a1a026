"""`python -m relpos ...` is the `relpos` command."""

import sys

from .cli import main

sys.exit(main())
