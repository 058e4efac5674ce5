"""`bookrec bench`: measure the real service (real Redis, real worker processes) on a goodbooks-shaped catalogue.

- `catalogue.py`: the synthetic catalogue and its base model, cached under `./var/bench/` by size.
- `service.py`: a private Redis database and `bookrec worker` supervisors run as subprocesses.
- `measure.py`: each measurement of the serving phase (throughput, latency, refresh, swap, retrain, memory, ...).
- `ratings_in.py`: the ratings phase: `bookrec ingest` into SQLite and PostgreSQL, bulk import, snapshots.
- `fresh_lists.py`: the fresh phase: a rating event to the reader's recomputed list, scoring from current histories,
  worker memory while ratings flow.
- `seed_path.py`: the 2019 seed notebook's way of scoring one user, for comparison.
- `machine.py`: what the machine is and how busy it was; memory of a process.
- `figures.py`: the figures, their targets and the table.
- `harness.py`: runs everything in order and returns a `Report`.
- `load.py`: `python -m bookrec.bench.load`, N single-user jobs each followed to its end (none failed or lost).
- `ingest_mix.py`: `python -m bookrec.bench.ingest_mix`, N rating events (5% bad, duplicates, out of order) through
  2 `bookrec ingest` processes, each one counted (none lost or applied twice); its mix is the ingest tests' too.

This module itself holds only the constants the CLI needs to build its parser (it imports nothing).
"""

PHASES = ("serving", "ratings", "fresh")
"""The benchmark's phases, in the order a full run does them."""
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
"""The PostgreSQL server (and a database on it to connect to) the ratings phase makes its databases on, unless told."""
