"""Export to other runtimes' formats (GGUF for llama.cpp)."""
from leanlm.export.gguf import export_gguf, read_gguf

__all__ = ["export_gguf", "read_gguf"]
