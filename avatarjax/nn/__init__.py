"""Shared layers. They know no system; every parameter and large activation carries logical axis names."""
