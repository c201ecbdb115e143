"""graphllm.runtime"""
