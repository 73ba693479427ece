"""`python -m sa_pgtq.cli`: the `sa-pgtq` command."""

import sys

from . import main

sys.exit(main())
