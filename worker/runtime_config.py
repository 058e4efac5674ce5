"""TensorFlow process settings: thread pools sized to the cores this process should use."""

from __future__ import annotations

import os


def configure_tensorflow(threads: int) -> None:
    """Size TensorFlow's thread pools (0 = TensorFlow's default, all cores); call before any TF op runs.

    Two worker processes on two cores each use one thread, so they do not oversubscribe the CPU.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # already initialised in this process: keep the pools it has
