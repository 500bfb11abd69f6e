from utils.errors import CheckpointError, ConfigError, UserError
from utils.util import (MetricTracker, inf_loop, prepare_device, read_json, seed_everything,
                        write_json)
