"""Models: tokenizers, encoder layers, the VisionTransformer, presets, pretrained and checkpoint loading, FLOPs."""
from .config import ViTConfig
from .registry import PRESETS, create_model, get_config, list_models
from .tokenizers import Tokenizer, list_tokenizers, register_tokenizer
from .vit import VisionTransformer

__all__ = ["ViTConfig", "VisionTransformer", "PRESETS", "create_model", "get_config", "list_models", "Tokenizer",
           "list_tokenizers", "register_tokenizer"]
