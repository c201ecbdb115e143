"""`python -m graphllm.webui -p PATH [-t N] [--custom FILE]`: fastllm's web page entry point (the chat page
and the OpenAI API it talks to, as `graphllm webui`)."""

import sys

from .commands.serve import main

if __name__ == "__main__":
    sys.exit(main(command="webui"))
