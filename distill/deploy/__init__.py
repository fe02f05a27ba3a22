"""From an exported student (a Hugging Face folder) to files a user ships, each checked against
PyTorch: the model card (``card``), ONNX with past key values plus int8 dynamic quantisation,
run by ONNX Runtime (``onnx``), GGUF for llama.cpp / Ollama / LM Studio (``gguf``), and a CPU
speed table of all of them side by side (``speed``). ``distill-export`` drives them; see
``docs/deploy.md``.
"""
