"""Data: the tables every stage reads and writes, and everything that makes them.

Holds the Arrow data model (`schema`), code identity (`codetext`), bad-input errors and
field checks (`errors`), the readers of public pair formats (`readers`) and of CoSQA
(`cosqa`), extraction of functions from source (`pysource`, `grammars`, `extract`) and
the corpus builder: its settings (`corpus_config`), source discovery and the Ray Data
fan-out of files (`sources`), dedupe and exclusion of evaluation codes (`dedupe`),
package splits (`splits`) and the job (`corpus`). **Add a reader or a language here.**

May import: the package root (config, storage, log, finite) only.
"""
