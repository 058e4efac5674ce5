"""`bookrec dashboard`: a small server-rendered web app for operators (Starlette, Jinja2 templates, uvicorn). It reads
Redis, the model store and the ratings store; its only writes are the token-guarded actions, each through the producer
(promote, roll back, a recommend job). Imports no TensorFlow. README: Dashboard."""
