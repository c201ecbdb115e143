"""graphllm.dsl"""
