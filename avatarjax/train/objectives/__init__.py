"""Per-system objectives: the only place in train/ that names a system."""
