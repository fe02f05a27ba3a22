"""``python -m distill.compare``: the ``distill-compare`` console script without the install."""

import sys

from distill.compare.cli import main

sys.exit(main())
