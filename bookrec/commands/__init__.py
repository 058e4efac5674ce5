"""One module per `bookrec` command group; each exposes `register(subparsers)`."""
