"""Ranking with trained models: stage-1 similarity, re-ranker scoring of pairs, two-stage
fusion, the ANN and text search over an index, and the retrieval metrics."""
