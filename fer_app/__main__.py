"""`python -m fer_app` runs the command line."""

import sys

from fer_app.cli import main

sys.exit(main())
