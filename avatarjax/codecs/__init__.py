"""Codecs: learned encoders/decoders between media and the latents the generators work on."""
