"""``python -m sim SCENARIO ...``: the simulator CLI without the rest of callengine."""

import sys

from sim.cli import main

sys.exit(main())
