"""What a config's `arch`, `loss` and `metrics` name: models (`model`), loss functions
(`loss`) and metric functions (`metric`)."""
