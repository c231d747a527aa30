"""``python -m bertforge``, which is also how ``torchrun -m bertforge`` starts the CLI."""

import sys

from bertforge.cli import main

sys.exit(main())
