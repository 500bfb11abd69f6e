"""Generic helpers, importing nothing of the project above them: the checkpoint file format
(`checkpoint`), weights in and out of wrapped models (`weights`), JSON and atomic file I/O
(`files`), seeding (`seeding`), stop signals (`interrupts`), errors (`errors`), the edge between
a script and its user (`cli`), torchrun's process group and agreed decisions (`distributed`),
and `util` (MetricTracker, devices). Import from the submodules."""
