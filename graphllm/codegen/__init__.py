"""graphllm.codegen"""
