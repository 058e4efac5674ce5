"""The client side of bookrec: `producer.Client` for other services, and the `bookrec` CLI.

Importing this package never imports TensorFlow.
"""

from producer.client import CachedRecommendations, Client

__all__ = ["CachedRecommendations", "Client"]
