"""Networks: DynUNet backbone, query transformer decoder, mask-classification heads and the mask transformer."""

from __future__ import annotations

from .backbone import DynUNetBackbone
from .checkpoint import load_weights
from .heads import MLP, MaskClassificationHead, to_channel_first
from .mask_transformer import MaskTransformer, split_prediction
from .position_encoding import SinePositionalEncoding
from .transformer_decoder import MultiHeadAttention, QueryDecoderLayer, QueryTransformerDecoder

__all__ = [
    "MLP",
    "DynUNetBackbone",
    "MaskClassificationHead",
    "MaskTransformer",
    "MultiHeadAttention",
    "QueryDecoderLayer",
    "QueryTransformerDecoder",
    "SinePositionalEncoding",
    "load_weights",
    "split_prediction",
    "to_channel_first",
]
