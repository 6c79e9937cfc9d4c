"""Interpreting a vitlab model: attention rollout, token relevance, receptive fields, overlays.

The steps, in the order ``vitlab attention`` runs them:

1. ``model.attention_maps(x)``: every block's softmax weights (B, heads, T, T), T = P prefix + N image tokens.
   Training uses fused SDPA, which never forms the weights; the model switches its explicit path on for that
   call only (``vitlab.models.layers.explicit_attention``), so the model is left as it was.
2. :func:`attention_rollout` (Abnar & Zuidema 2020): fuse the heads, add the identity for the residual
   connection, renormalise rows, multiply through the layers -> (B, T, T).
3. :func:`token_relevance`: how much each image token feeds the pooled output -> (B, gh, gw).
4. :func:`to_pixels`: spread each token's relevance over the pixels it sees (its receptive field, exact for the
   overlapping conv and CCT tokenizers too) -> (B, H, W).
5. :func:`save_overlays`: image + heat map PNGs.
"""
from .overlay import denormalize, save_overlays, show_overlay
from .receptive_field import receptive_field_geometry, to_pixels
from .rollout import (HeadFusion, attention_rollout, pixel_relevance, pooled_row_weights, rollout_per_layer,
                      token_relevance)

__all__ = ["HeadFusion", "attention_rollout", "rollout_per_layer", "pooled_row_weights", "token_relevance",
           "pixel_relevance", "receptive_field_geometry", "to_pixels", "denormalize", "show_overlay",
           "save_overlays"]
