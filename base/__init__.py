"""What the user subclasses: BaseModel, BaseDataLoader, Callback; the loop: base.base_trainer.BaseTrainer."""
from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from base.callbacks import Callback

# BaseTrainer is imported from base.base_trainer: it builds on the step machinery (step/), which
# itself uses base.base_data_loader, so importing it here would make the two import each other.
__all__ = ["BaseDataLoader", "BaseModel", "Callback"]
