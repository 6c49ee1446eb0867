"""Models: the dual-encoder retriever and the cross-encoder ranker, both over any HF encoder.

Both save in plain Hugging Face format (safetensors, tokenizer files) plus a small
`r2ps.json`, so a checkpoint can be opened with `AutoModel.from_pretrained` as well.
"""
