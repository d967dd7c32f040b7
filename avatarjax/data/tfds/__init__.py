"""tfds Beam builders for real talking-face datasets (MEAD, HDTF, REACT2024, ...) and their shared machinery."""
