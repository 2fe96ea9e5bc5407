"""The job API: FastAPI over Postgres/SQLite. The only code that touches the database."""
