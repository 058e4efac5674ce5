"""The ingest: the ratings stream into the ratings store, exactly once (README: Ingest). No TensorFlow here."""
