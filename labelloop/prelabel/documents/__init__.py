"""Document pre-labeling backends: ``pymupdf`` (CPU, embedded default) and ``mineru``."""
