"""graphllm: describe an LLM as a ComputeGraph, compile it with Apache TVM, run it."""

__version__ = "0.1.0"
