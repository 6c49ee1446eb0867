"""Models: the dual-encoder retriever and the cross-encoder ranker, both over any HF encoder.

Both save in plain Hugging Face format (safetensors, tokenizer files) plus a small
`r2ps.json`, so a checkpoint can be opened with `AutoModel.from_pretrained` as well.
`encoder` loads and pools, `dual` and `cross` are the two families, `onnx` exports them
and runs them on ONNX Runtime. **Add a serving backend in `onnx`.**

May import: the package root and `r2ps.data`.
"""
