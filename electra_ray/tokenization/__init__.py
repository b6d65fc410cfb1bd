"""MeCab + WordPiece: pre-tokenization, vocabulary training, and the fast exact encoder."""

from electra_ray.tokenization.wordpiece import JapaneseWordPieceTokenizer, TokenizerFolderError

__all__ = ["JapaneseWordPieceTokenizer", "TokenizerFolderError"]
