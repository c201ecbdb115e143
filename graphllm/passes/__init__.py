"""graphllm.passes"""
