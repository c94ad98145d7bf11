"""``python -m litevit ...``: the ``litevit`` command."""

import sys

from .cli import main

sys.exit(main())
