"""The readers waiting for a fresh recompute, and the one fresh job that takes them (README: Fresh lists).

    bookrec:fresh:pending         sorted set: reader -> when they started waiting (epoch ms); oldest first
    bookrec:fresh:queued          string, expires: set while a fresh job is queued that has not taken readers yet
    bookrec:fresh:taken:{job_id}  list, expires: the readers a fresh job took, until it has cached their lists

Whoever has readers to recompute (the ingest after a commit, a fresh job handing on readers) adds them (`add`): a
reader already waiting keeps their place, and a fresh job is asked for (`wake`) only when none is queued. A fresh
job without `user_ids` takes up to MAX_USERS_PER_JOB of the oldest (`take`), so however fast events arrive, one job
recomputes everything that arrived while the one before it ran. A job's first take clears `queued`: a reader added
after it is either taken by this job or asks for a new one, never stranded; a job taking again (worker/jobs.py)
leaves `queued` alone, so a job queued meanwhile still stands for it and the queue never fills with jobs. What a
job took stays under its id until it is done (`release`), so a job killed and run again under its id recomputes the
same readers.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis
from redis.commands.core import Script
from rq import Queue
from rq.serializers import JSONSerializer

from bookrec.shared import jobs
from bookrec.shared.keys import QUEUE_FRESH, Keys
from bookrec.shared.redis_conn import PackedScript, text
from bookrec.shared.settings import Settings

QUEUED_TTL_MS = 10_000
"""How long `queued` outlives the job it stands for if that job never arrives (its enqueuer died in between): then
the next `add` asks for a job again."""

ADD = Script(
    None,
    b"""
-- KEYS[1] pending, KEYS[2] queued. ARGV[1] queued's TTL in ms, then the readers. Returns 1 if a fresh job must be
-- enqueued (none was queued), else 0.
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for start = 2, #ARGV, 1000 do
  local args = {}
  for i = start, math.min(#ARGV, start + 999) do
    args[#args + 1] = now_ms
    args[#args + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[1], 'NX', unpack(args))
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
""",
)
"""Add readers and say whether to wake a job: redis-py's Script, so it can go in the ingest's acknowledging MULTI."""

TAKE = PackedScript(
    """
-- KEYS[1] pending, KEYS[2] queued, KEYS[3] this job's taken list. ARGV[1] most readers, ARGV[2] the list's TTL (ms),
-- ARGV[3] '1' for the job's first take (it clears queued: the job queued is this one), '0' for a later one (a job
-- queued meanwhile still stands for queued). Returns {readers still pending, reader...}: the job's list if it has
-- one (it is run again), else the oldest pending readers, moved into it.
local taken = redis.call('LRANGE', KEYS[3], 0, -1)
if #taken > 0 then return {redis.call('ZCARD', KEYS[1]), unpack(taken)} end
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local readers = {}
for i = 1, #popped, 2 do readers[#readers + 1] = popped[i] end
for start = 1, #readers, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(readers, start, math.min(#readers, start + 999)))
end
if #readers > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
return {redis.call('ZCARD', KEYS[1]), unpack(readers)}
"""
)


def add(client: redis.Redis | redis.client.Pipeline, keys: Keys, readers: Sequence[str]) -> Any:
    """Add `readers` to the pending set in one script call; 1 if a fresh job must be asked for (`wake`), else 0. On
    a pipeline the call is queued there and its reply comes with the pipeline's."""
    args = [QUEUED_TTL_MS, *readers]
    script_keys = [keys.fresh_pending, keys.fresh_queued]
    if isinstance(client, redis.client.Pipeline):
        # EVAL with the source, as delta.write does in the same MULTI (no SCRIPT EXISTS, no NOSCRIPT inside it).
        return client.eval(ADD.script, 2, *script_keys, *args)
    return int(ADD(keys=script_keys, args=args, client=client))


def wake(client: redis.Redis, keys: Keys, settings: Settings) -> None:
    """Enqueue a fresh job that takes pending readers (`add` said none was queued)."""
    queue = Queue(keys.queue(QUEUE_FRESH), connection=client, serializer=JSONSerializer)
    queue.enqueue_many([jobs.fresh({}, settings, description="fresh lists of pending readers")])


def add_and_wake(client: redis.Redis, keys: Keys, settings: Settings, readers: Sequence[str]) -> None:
    """`add` `readers` and `wake` a job if none is queued."""
    if readers and add(client, keys, readers):
        wake(client, keys, settings)


def ensure_job(client: redis.Redis, keys: Keys, settings: Settings) -> bool:
    """Wake a fresh job if readers are pending and none is queued (the enqueuer of the last one died before it
    enqueued it, say); whether one was woken."""
    if not client.zcard(keys.fresh_pending) or not client.set(keys.fresh_queued, "1", nx=True, px=QUEUED_TTL_MS):
        return False
    wake(client, keys, settings)
    return True


def take(
    client: redis.Redis, keys: Keys, job_id: str, most: int, ttl_ms: int, first: bool = True
) -> tuple[list[str], int]:
    """The readers fresh job `job_id` recomputes (those it took before, if it is run again; else up to `most` of the
    oldest pending, kept under its id for `ttl_ms`), and how many are still pending. Only a job's `first` take
    clears `queued`: a job queued while this one ran has taken nothing yet, and a later take leaves it standing."""
    script_keys = [keys.fresh_pending, keys.fresh_queued, keys.fresh_taken(job_id)]
    reply = TAKE(client, script_keys, [most, ttl_ms, "1" if first else "0"])
    return [text(reader) for reader in reply[1:]], int(reply[0])


def release(client: redis.Redis, keys: Keys, job_id: str) -> None:
    """Forget what fresh job `job_id` took: their lists are cached (or handed on)."""
    client.delete(keys.fresh_taken(job_id))
