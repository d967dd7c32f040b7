"""Pretrained conditioning encoders in Flax NNX (CLIP text, wav2vec2, umT5, MiniLM/BERT, Qwen2) with converters
from local Hugging Face checkpoints (see avatarjax.checkpoint.convert)."""
