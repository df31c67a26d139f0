"""Text in, token shards out: tokenizers, corpora, binary shards and the prepare step."""

from remask.data.corpus import CorpusStats, Document, default_corpus_files, is_validation, iter_documents
from remask.data.prepare import is_prepared, load_meta, prepare, resolve_data
from remask.data.shards import ShardWriter, TokenData, token_dtype
from remask.data.tokenizer import (
    BOS,
    END_HEADER,
    EOS,
    EOT,
    MASK,
    START_HEADER,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    byte_tokenizer,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "BOS", "END_HEADER", "EOS", "EOT", "MASK", "START_HEADER",
    "ByteTokenizer", "CorpusStats", "Document", "HFTokenizer", "ShardWriter", "TokenData", "Tokenizer",
    "byte_tokenizer", "default_corpus_files", "is_prepared", "is_validation", "iter_documents",
    "load_meta", "load_tokenizer", "prepare", "resolve_data", "token_dtype", "train_bpe",
]
