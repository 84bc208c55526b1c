"""Qwen-VL pre-labeling through vLLM's OpenAI-compatible API.

``client`` speaks HTTP (pooling, retries), ``confidence`` turns token logprobs into per-field
confidence, ``backend`` ties them to task specs and the runner.
"""

from labelloop.prelabel.vllm.backend import VLLMBackend

__all__ = ["VLLMBackend"]
