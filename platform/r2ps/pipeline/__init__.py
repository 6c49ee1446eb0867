"""The main job: corpus -> retriever -> index + PS negatives -> two rankers -> evaluation.

`stages` holds the stage table (what each stage runs, reads and writes) and the runner
that skips a stage whose fingerprint is up to date; `config` the job's settings (presets,
a section per stage) and `build_stages`, which wires every stage's job config under
`out`; `run` runs them, locally or in a URI's mirror, and writes serve.yaml.
`jobs/pipeline.py` only parses and calls `run.run_pipeline`.

May import: every other part of the package (it is the top layer); nothing imports it.
"""
