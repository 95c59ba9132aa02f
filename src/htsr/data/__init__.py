"""Datasets and corpora shared by recipes: real data that works offline."""
