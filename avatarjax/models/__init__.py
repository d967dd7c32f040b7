"""Generators and other trainable models."""
