"""Search your own code: index a source tree (files.py: what is read; indexer.py: the job)."""
