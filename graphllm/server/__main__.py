"""`python -m graphllm.server -p PATH [-t N] [--custom FILE]`: fastllm's server entry point."""

import sys

from ..commands.serve import main

sys.exit(main())
