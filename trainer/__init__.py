"""The concrete trainer and the pieces `BaseTrainer` delegates to (checkpoint I/O, evaluation).

Import from the submodules (`from trainer.trainer import Trainer`): `base.base_trainer` imports
`trainer.checkpoint`, so this package must not import `trainer.trainer` eagerly.
"""
