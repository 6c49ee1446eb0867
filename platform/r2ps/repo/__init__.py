"""Search your own code: which files of a tree are read (`files`), and the incremental
index job over them (`indexer`): its settings (`config`), each file's units and the
state kept between runs (`units`), vectors by content id and the faiss index
(`vectors`).

May import: the root, data, models, mining, search, evaluation (not train or serving).
"""
