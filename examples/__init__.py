"""Optional leaf: worked examples of a user's own task (data, model, a Trainer subclass)."""
