"""Search your own code: which files of a tree are read (`files`), and the incremental
index job over them (`indexer`).

May import: the root, data, models, mining, search, evaluation (not train or serving).
"""
