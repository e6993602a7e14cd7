"""Build an encoder from its spec; backends import heavy libraries lazily."""

from __future__ import annotations

from encoders.base import Encoder, EncoderSpec


def build_encoder(spec: EncoderSpec) -> Encoder:
    if spec.backend == "transformers":
        from encoders.transformers_backend import TransformersEncoder

        return TransformersEncoder(spec)
    if spec.backend == "vllm":
        from encoders.vllm_backend import VLLMEncoder

        return VLLMEncoder(spec)
    if spec.backend == "openai_http":
        from encoders.openai_http import OpenAIHTTPEncoder

        return OpenAIHTTPEncoder(spec)
    raise ValueError(f"unknown encoder backend {spec.backend!r}")
