"""Versioned model artifacts on disk and the record of which version is in production.

`store.ModelStore` saves, lists, verifies, retains and deletes versions; `promotion` moves the
production pointer (store record, Redis key, event); `plot` draws a version's curves and metrics.
Nothing here imports TensorFlow: a SavedModel is just a directory of files to the store.
"""
