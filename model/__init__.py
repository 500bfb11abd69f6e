"""The user's models, losses and metrics, which a config's arch, loss and metrics name."""
