"""Orbax checkpoint management (train state + data iterator + config) and weight conversion."""
