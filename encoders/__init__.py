"""Text -> vector backends behind one protocol (see `encoders.base.Encoder`)."""

from encoders.base import Encoder, EncodeResult, EncoderSpec, InputKind, Pooling, Tokenized
from encoders.factory import build_encoder

__all__ = [
    "EncodeResult",
    "Encoder",
    "EncoderSpec",
    "InputKind",
    "Pooling",
    "Tokenized",
    "build_encoder",
]
