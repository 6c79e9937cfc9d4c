"""Models: tokenizers, encoder layers, the VisionTransformer, presets, pretrained loading, FLOPs."""
from .config import ViTConfig
from .registry import PRESETS, create_model, get_config, list_models
from .vit import VisionTransformer

__all__ = ["ViTConfig", "VisionTransformer", "PRESETS", "create_model", "get_config", "list_models"]
