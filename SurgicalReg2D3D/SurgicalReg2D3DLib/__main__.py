"""``python -m SurgicalReg2D3DLib`` is the ``surgreg`` command."""

import sys

from .cli import main

sys.exit(main())
