"""The only code that touches SQLite: one Database gateway and one typed-query module per aggregate."""

from storage.database import Database

__all__ = ["Database"]
