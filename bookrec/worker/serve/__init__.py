"""Serving a model version inside RQ processes: the worker loop, the model holder and its hot swap,
the retrain job's body, and the supervisor (`python -m bookrec.worker.serve.supervisor`).
"""
