"""Preprocessing of real and synthetic videos before training: face localisation and cropping (``pfl``)."""
