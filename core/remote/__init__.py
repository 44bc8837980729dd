"""Talking to OpenAI-compatible inference servers (llama.cpp's server, llama-cpp-python's, vLLM,
Ollama): which endpoint takes a request (`endpoints`), one streamed chat completion (`chat`),
token counts for trimming (`tokens`). `core.engines.remote.OpenAIEngine` puts them together."""
