"""``python -m cocyclereg`` runs the command line."""

import sys

from cocyclereg.cli import main

sys.exit(main())
