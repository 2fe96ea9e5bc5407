"""Helpers shared by the test folders: plain functions and classes, never fixtures (those stay in the
conftest files that use them).

- :mod:`~tests.support.waiting`: wait for a condition or an HTTP answer, failing with what was awaited.
- :mod:`~tests.support.servers`: an ASGI app on uvicorn in a thread, on a free port.
- :mod:`~tests.support.stacks`: API and reward servers as real processes, on ``LocalStack``.
- :mod:`~tests.support.databases`: a throwaway Postgres database or schema, a Redis database of one's own.
- :mod:`~tests.support.specs`: job specs for the letter task, as dicts.
"""
