"""``python -m pktpath`` runs the pktpath command."""

import sys

from pktpath.cli.main import main

sys.exit(main())
