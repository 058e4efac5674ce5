"""Making a model version: data, models, training, evaluation, the SavedModel export, the gate.

No Redis and no RQ here; `pipeline.train_version` turns a ratings file into a stored version.
Importing this package does not import TensorFlow; the modules that need it import it themselves.
"""
