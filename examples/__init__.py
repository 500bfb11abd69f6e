"""Worked examples of a user's own task, each a module a config names by dotted path
(`"arch": {"type": "examples.vae.VAE"}`): its data loader, model and, where the default step
does not fit, a small Trainer subclass. See README.md, "Your own task"."""
