"""Checkpoints in and out of the mlxsmall format (docs/architecture.md).

- `hf`: Hugging Face checkpoint dirs (MobileLLM, MobiLlama, plain llama) -> our format
- `torch_bin`: torch-free, code-free reader for `pytorch_model.bin` (zip-pickle)
- safetensors reading (the one validated header reader) is `mlxsmall.safetensors_io`, in the format layer that convert/ builds on
- `gguf`: llama-family GGUF files -> our format (quantization kept)
- `tokenizer`, `chat_templates`: tokenizer files that load offline, chat templates
- `export`: our format -> Hugging Face layout
"""
