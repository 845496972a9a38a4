"""Derivatives and tracing, on the data plane: plaintext only in memory, one tensor at a time.

Modules: `transforms` (what a recipe does to one tensor), `marks` (the per-recipient
spread-spectrum mark), `sketch` (the keyed identity sketch stored at registration),
`layout` (the output file, safetensors or GGUF, planned before any tensor is read),
`derive` (a sealed source replica into a sealed derivative), `suspect` (tensors out of a file
found elsewhere, without unpickling) and `evidence` (the statistics `trace` and `identify` decide on).
"""
