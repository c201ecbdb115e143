"""graphllm.models"""
