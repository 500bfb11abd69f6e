"""Helpers shared by every layer; import from the submodules (`utils.util`, `utils.errors`, ...)."""
