"""The config system behind `parse_config.ConfigParser`: dotted key paths and `-o` overrides
(`key_paths`), config `type` names to callables inside an allow-list (`names`) and their
arguments against signatures (`signatures`), the whole-config check that reports every
problem at once (`checks`), the model switches `arch.*` / `param_groups` (`model_options`) and
the command line (`command_line`). It knows no trainer, model or data loader: what it checks of
them is named by the blocks the entry scripts describe."""
