"""Adapters for objects (local folder or S3) and records (SQLAlchemy)."""
