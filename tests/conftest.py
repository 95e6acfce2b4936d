"""Shared by unit and integration tests. Its presence puts tests/ on sys.path, so shared
helpers (pg_fixture, oidc_fixture) import as plain modules."""
