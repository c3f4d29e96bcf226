"""LLM/VLM backends served by vLLM, prompts, hierarchical dense captions and long-video QA."""
