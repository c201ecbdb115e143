"""Model files in: GGUF and Hugging Face folders, lazy weights, tokenizers and chat templates, the default model."""
