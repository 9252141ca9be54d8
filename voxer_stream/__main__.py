"""``python -m voxer_stream``: the ``voxer-stream`` command."""

import sys

from .cli import main

sys.exit(main())
