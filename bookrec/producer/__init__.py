"""The client library other services import: `from bookrec.producer import Client`.

Importing it loads redis and rq only: never TensorFlow, Keras, pandas or matplotlib.
"""

from bookrec.producer.client import CachedRecommendations, Client

__all__ = ["CachedRecommendations", "Client"]
