"""What the user subclasses: BaseModel, BaseDataLoader, BaseTrainer (the loop), Callback."""
from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.base_trainer import BaseTrainer
from base.callbacks import Callback

__all__ = ["BaseDataLoader", "BaseModel", "BaseTrainer", "Callback"]
