"""Frozen conditioning encoders (D9, D10): our Flax T5 and SigLIP, loaded from HF folders.

Modules (import the one you need; nothing heavy is imported here):
  t5           `T5Config`, `T5Encoder` (Flax T5 v1.1 encoder stack), `t5_v1_1_xxl_config`
  siglip       `SiglipVisionConfig`, `SiglipVisionTower` (patch ViT + MAP pooling head)
  loaders      `load_t5`, `load_siglip_vision`, `load_tokenizer` (safetensors, no torch)
  hf_checkpoint  config.json / safetensors reading and key validation
  text         `TextEncoder`, `text_config`, `make_text_encoder` (builtin byte-level or T5)
  precomputed  `write_precomputed`, `PrecomputedTextEmbeddings` (ArrayRecord store)
  projection   `Projection`, a multi-axis linear layer that shards at init
"""
