"""Interop: open models in, gptlab checkpoints out, and back (`gptlab import` / `gptlab export`).

  hf    Hugging Face directories and Hub ids, the model aliases (`ensure_model`), the
        import / export entry points, LoRA merging on export
  gguf  llama.cpp's GGUF files: read (dequantize, un-permute q/k, tokenizer) and write

The public names of `hf` are re-exported here: `from gptlab.interop import import_model`.
"""
from gptlab.interop.hf import (
    ALIASES, HUB_PATTERNS, SMOLLM2_INSTALL, TORCH_DTYPES, Source, ensure_model, export_model,
    find_adapter, import_model, merge_lora, models_home, resolve_source, smollm2_gguf,
    source_sha256)

__all__ = [
    "ALIASES", "HUB_PATTERNS", "SMOLLM2_INSTALL", "TORCH_DTYPES", "Source", "ensure_model",
    "export_model", "find_adapter", "import_model", "merge_lora", "models_home",
    "resolve_source", "smollm2_gguf", "source_sha256"]
