"""The training wing: `config` (options, checks, CLI metadata in one place), `loop` (pretraining), `cli`.

Nothing is imported here, so `relpos.train.config` can be read (by `relpos eval`, the pretext tasks) without
loading the training loop.
"""
