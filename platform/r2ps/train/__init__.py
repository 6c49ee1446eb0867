"""Training both encoders on Ray Train + DeepSpeed: one loop, one launcher.

`config` (settings), `loop` (the loop and the `Task` contract), `launch` (TorchTrainer),
`retriever` and `ranker` (a `Task` each; `ranker_data` builds its groups), `losses`
(InfoNCE, listwise CE: **add a loss here**), `wise_ft`.

May import: every layer below it: the root, data, models, mining, search, evaluation.
"""
