"""iBOT: Image BERT pre-training with online tokenizer."""

__version__ = "0.1.0"
