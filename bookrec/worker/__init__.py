"""The worker side: `learn/` makes a model version, `serve/` runs it in RQ processes, `jobs.py` holds
the public job functions (`worker.jobs.recommend|refresh|retrain`).

Importing this package does not import TensorFlow; the modules that need it import it themselves.
"""
