"""The contract between bookrec's parts: settings, errors, logs, Redis keys, payloads, cache entries,
job names and options, the retrain lock and the worker-state hash. No TensorFlow, pandas or argparse.
"""
