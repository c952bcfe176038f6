"""Where the Responses API keeps its responses: a SQLite file by default (one replica), Redis for many replicas
(`--response-store redis://...`), so that a conversation started on one replica continues on another."""

from chatgen.store.base import ResponseStore, StoredResponse, StoreLimits, open_store

__all__ = ["ResponseStore", "StoreLimits", "StoredResponse", "open_store"]
