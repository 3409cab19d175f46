"""Corpora in: annotation formats, the dataset a run reads, and decoding video files to frames."""
