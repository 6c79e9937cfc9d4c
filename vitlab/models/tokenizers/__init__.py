"""Tokenizers: images (B, C, H, W) -> tokens (B, N, D). One file per tokenizer; ``base.py`` holds the interface
(:class:`Tokenizer`) and the registry, and says how to add one."""
from .base import (Layout, Tokenizer, build_tokenizer, check_input, check_option, conv_macs, conv_out, get_tokenizer,
                   is_int, list_tokenizers, register_tokenizer, unregister_tokenizer)
# the built-ins register themselves on import, in this order
from .patch import PatchEmbed
from .conv_stem import ConvStem, default_stem_channels
from .cct import CCTTokenizer

__all__ = ["Tokenizer", "Layout", "register_tokenizer", "unregister_tokenizer", "get_tokenizer", "list_tokenizers",
           "build_tokenizer", "check_input", "check_option", "is_int", "conv_macs", "conv_out", "PatchEmbed",
           "ConvStem", "CCTTokenizer", "default_stem_channels"]
