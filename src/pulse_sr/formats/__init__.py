"""Readers for third-party weight file formats (pure data, no code from the file is run)."""
