"""Hugging Face models, loaded offline: directories with weights, bare configs, and tiny presets."""

from scaling.models.load import ModelSource, build_model, describe_source, hf_config_for, model_class_for

__all__ = ["ModelSource", "build_model", "describe_source", "hf_config_for", "model_class_for"]
