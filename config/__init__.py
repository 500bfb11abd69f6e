"""The config system behind parse_config.py: key paths, overrides, names, the whole-config check."""
