"""`bookrec scheduler`: retrains on a schedule (BOOKREC_RETRAIN_CRON, BOOKREC_RETRAIN_AFTER_RATINGS) with rq.cron.

No TensorFlow, pandas or numpy: the scheduler only counts ratings in the store and enqueues retrain jobs, which the
trainer runs.
"""
