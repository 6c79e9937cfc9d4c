"""vitlab: a readable Vision Transformer with patch, conv-stem and CCT tokenizers, weight-identical to timm."""
from .models.config import ViTConfig
from .models.registry import create_model, get_config, list_models
from .models.vit import VisionTransformer

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "get_config", "ViTConfig", "VisionTransformer", "__version__"]
