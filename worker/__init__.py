"""The worker side: model definition, training, evaluation, serving export, and the RQ worker process.

Importing this package does not import TensorFlow; the modules that need it import it themselves.
"""
