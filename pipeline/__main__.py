"""`python -m pipeline <verb>`."""

import sys

from .cli import main

sys.exit(main())
