"""The base layer: what every task shares, whatever its step. The epoch loop (`BaseTrainer`)
with its parts — checkpoint policy (`checkpoint_saver`), the best epoch (`monitoring`), resume
reconciliation (`resume`), the loop's settings (`settings`), a run folder's files
(`run_folder`, `manifest`) — and `BaseDataLoader` with its seeded samplers, `BaseModel`, and
model tools (summary, init, freeze, parameter groups)."""
from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.base_trainer import BaseTrainer
from base.samplers import EpochSampler

__all__ = ["BaseDataLoader", "BaseModel", "BaseTrainer", "EpochSampler"]
