"""`python -m evalkit.generate.worker RUN_DIR BACKEND TAG`."""

import sys

from evalkit.generate.worker.run import main

sys.exit(main())
