"""Datasets: text corpora -> tokenised, packed blocks; image datasets -> normalised tensors."""

from .corpus import SHAKESPEARE_SHA256, TextSplits, cache_root, load_text
from .images import ImageData, augment, load_images
from .text import LMData, build_lm_data
from .tokenizer import build_tokenizer

__all__ = ["SHAKESPEARE_SHA256", "ImageData", "LMData", "TextSplits", "augment", "build_lm_data", "build_tokenizer",
           "cache_root", "load_images", "load_text"]
