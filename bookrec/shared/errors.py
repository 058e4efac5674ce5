"""Errors a user or operator can cause. Each message names the problem and, where there is one, the fix.

The CLI turns any `BookrecError` into one line on stderr and a non-zero exit code; library
code raises them and never prints.
"""


class BookrecError(Exception):
    """Base class for every error bookrec reports to a user instead of a traceback."""

    exit_code = 1


class DataError(BookrecError):
    """A ratings or books file cannot be used as it is (missing, unreadable, wrong columns, bad values)."""

    exit_code = 2


class ValidationError(BookrecError):
    """An argument (user id, n, path, model kind, job payload) is out of range or of the wrong type."""

    exit_code = 2


class ConfigError(BookrecError):
    """A setting from the environment is malformed."""

    exit_code = 2


class MissingDependency(BookrecError):
    """A command needs a part of bookrec that is not installed (`pip install 'bookrec[worker]'`)."""

    exit_code = 2


class ModelStoreError(BookrecError):
    """The model store cannot do what was asked (unknown version, corrupt version, nothing in production)."""

    exit_code = 3


class VersionNotFound(ModelStoreError):
    """The named model version does not exist in the store."""


class CorruptVersion(ModelStoreError):
    """A version directory is incomplete or damaged; the message names the file."""


class NoProductionModel(ModelStoreError):
    """No version has been promoted yet."""


class CatalogueMismatch(ModelStoreError):
    """A version was trained on another catalogue than production's; promoting it needs `force`."""


class RedisUnavailable(BookrecError):
    """Redis did not answer; the message says where it was looked for (without the password)."""

    exit_code = 4


class RedisRefusingWrites(RedisUnavailable):
    """Redis answers but refuses writes (out of memory under noeviction, a read-only replica, a failed snapshot)."""


class NotReplicated(RedisUnavailable):
    """A write reached the Redis master but fewer replicas than BOOKREC_REDIS_WAIT_REPLICAS confirmed it in time:
    a failover could lose it, so send it again (rating events and recommend requests are safe to repeat)."""


class RetrainRunning(BookrecError):
    """A retrain is already running; the message names its job id."""

    exit_code = 5

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a retrain is already running (job {job_id}); wait for it or check `bookrec status`")
        self.job_id = job_id


class JobFailed(BookrecError):
    """A job that the caller waited for ended FAILED; the message carries the worker's reason."""

    exit_code = 6


class RefreshIncomplete(JobFailed):
    """A refresh can no longer finish: some of its chunks failed for good, or its records vanished from Redis."""


class Timeout(BookrecError):
    """Waiting for a job or an event took longer than the caller allowed."""

    exit_code = 7


class NotCached(BookrecError):
    """A reader has no cached list (never requested, expired, or cached under another prefix)."""

    exit_code = 8


class RetrainCancelled(JobFailed):
    """A retrain was cancelled on request (`bookrec retrain cancel`): the trainer stopped it, or it never started."""

    exit_code = 9


class MalformedEntry(BookrecError):
    """A reader's cache key holds something that is not a bookrec entry (written by someone else, or damaged)."""

    exit_code = 10


class VersionNotServed(ModelStoreError):
    """A job must run on a model version this worker could not load (yet); the message says why."""


class RatingsStoreError(BookrecError):
    """The ratings store (BOOKREC_DATABASE_URL) cannot be reached or refused a statement; the message says why."""

    exit_code = 11


class BadEvent(ValidationError):
    """A rating event breaks the ratings stream's rules; `reason` is the short why (also the dead letter's `reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
