"""thawing: multi-task fine-tuning of sentence-embedding transformers, with control over what learns."""

__version__ = "0.1.0"
