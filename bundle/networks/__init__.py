"""Networks: DynUNet backbone (and the contract of a swappable one), query transformer decoder, mask-classification
heads and the mask transformer."""

from __future__ import annotations

from .backbone import DynUNetBackbone, FeatureBackbone, check_backbone
from .checkpoint import load_weights
from .heads import MLP, MaskClassificationHead, to_channel_first
from .mask_transformer import MaskTransformer, split_prediction
from .position_encoding import SinePositionalEncoding
from .transformer_decoder import MultiHeadAttention, QueryDecoderLayer, QueryTransformerDecoder

__all__ = [
    "MLP",
    "DynUNetBackbone",
    "FeatureBackbone",
    "MaskClassificationHead",
    "MaskTransformer",
    "MultiHeadAttention",
    "QueryDecoderLayer",
    "QueryTransformerDecoder",
    "SinePositionalEncoding",
    "check_backbone",
    "load_weights",
    "split_prediction",
    "to_channel_first",
]
