"""Models: the dual-encoder retriever and the cross-encoder ranker, both over any HF encoder.

Both save in plain Hugging Face format (safetensors, tokenizer files) plus a small
`r2ps.json`, so a checkpoint can be opened with `AutoModel.from_pretrained` as well.
`encoder` loads and pools, `dual` and `cross` are the two families, `onnx_export` exports
them to ONNX, `backends` loads either by backend (torch, or ONNX Runtime fp32 / int8).
**Add a serving backend in `backends`.**

May import: the package root and `r2ps.data`.
"""
