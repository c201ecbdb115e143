"""`python -m graphllm.chat -t 2 -p PATH [--custom FILE]`: fastllm's chat entry point (as `graphllm chat`)."""

import sys

from .commands.chat import main

if __name__ == "__main__":
    sys.exit(main())
