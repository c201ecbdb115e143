"""The `graphllm` subcommands, one module each; `common` declares the flags they share."""
