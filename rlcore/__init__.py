"""rlcore: the PPO and GRPO engine. Knows nothing of FastAPI, Celery or SQL."""

__version__ = "0.1.0"
