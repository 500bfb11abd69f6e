"""The user's data: the data loaders a config's data_loader.type names, and their data sets."""
