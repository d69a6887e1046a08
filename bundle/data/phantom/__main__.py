"""``python -m bundle.data.phantom``: generate the phantom benchmark (see :func:`bundle.data.phantom.generate.main`)."""

import sys

from .generate import main

sys.exit(main())
