"""Datasets: text sources -> token shards on disk (prepared once, read block by block) or a stream; image datasets ->
normalised tensors."""

from .holdout import route, sample_documents
from .images import ImageData, augment, load_images
from .order import example_indices, rank_positions
from .preparation import prepare, request_of
from .shards import TokenBlocks, TokenSplit, read_manifest
from .sources import SHAKESPEARE_SHA256, TextSource, cache_root
from .stream import StreamBlocks
from .text import LMData, build_lm_data
from .tokenizer import build_tokenizer

__all__ = ["SHAKESPEARE_SHA256", "ImageData", "LMData", "StreamBlocks", "TextSource", "TokenBlocks", "TokenSplit",
           "augment", "build_lm_data", "build_tokenizer", "cache_root", "example_indices", "load_images", "prepare",
           "rank_positions", "read_manifest", "request_of", "route", "sample_documents"]
