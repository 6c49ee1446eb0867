"""Data: the tables every stage reads and writes, and everything that makes them.

Holds the Arrow data model (`schema`), code identity (`codetext`), bad-input errors
(`errors`), the readers of public pair formats and CoSQA (`readers`), extraction of
functions from source (`pysource`, `grammars`, `extract`) and the corpus builder
(`corpus`: discovery, dedupe, splits). **Add a reader or a language here.**

May import: the package root (config, storage, log, finite) only.
"""
