"""Benchmarks side by side with the PyTorch references: the shared timing harness (:mod:`.harness`), plain-torch
references (:mod:`.torch_refs`), the generic training-step benchmark (:mod:`.train_step`) and ``avatarjax bench
all`` (:mod:`.all`)."""
