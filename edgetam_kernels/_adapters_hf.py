"""Adapters for Hugging Face transformers' EdgeTAM (`transformers.models.edgetam_video`)."""
