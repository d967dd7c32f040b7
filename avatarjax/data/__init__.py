"""Data: grain pipelines, synthface, real-dataset builders, preprocessing. Arrays in, arrays out."""
