"""r2ps: neural code search on Ray (retriever, ranker, PS hard negatives, cascade serving)."""

__version__ = "0.1.0"
