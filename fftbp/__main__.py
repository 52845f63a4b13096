"""``python -m fftbp``: the same as the ``fftbp`` command."""

import sys

from fftbp.cli import main

sys.exit(main())
