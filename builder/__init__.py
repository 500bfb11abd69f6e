"""From a checked config and the user's modules (handed in by the entry scripts) to a ready trainer."""
