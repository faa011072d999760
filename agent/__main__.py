"""``python -m agent`` runs the pktpath command."""

import sys

from agent.cli import main

sys.exit(main())
