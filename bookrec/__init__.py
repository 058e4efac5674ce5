"""bookrec: event-driven book recommendations.

The installed namespace. Its rooms, top-down (each imports only the ones below it):

- `bookrec.cli`, `bookrec.commands`, `bookrec.plot`: the `bookrec` command, a leaf nothing imports;
- `bookrec.bench`: `bookrec bench` and the benchmark scripts;
- `bookrec.producer`: the client library other services import (`from bookrec.producer import Client`);
- `bookrec.worker.serve`: the RQ worker processes and their supervisor; `bookrec.worker.jobs`: the job functions;
- `bookrec.worker.learn`: making a model version (no Redis, no RQ);
- `bookrec.model_store`: versions on disk and the one promote path;
- `bookrec.shared`: the contract between them (settings, keys, payloads, job names, entries, errors).

This module imports nothing, so `import bookrec.producer` costs only the client.
"""
