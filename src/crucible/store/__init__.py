"""Storage: tables, repository functions, migrations and content-addressed blobs."""

from crucible.store.blobs import BlobStore
from crucible.store.repo import BatchCounts, Claim, EvaluationFilter, NewEvaluation, Store

__all__ = ["BatchCounts", "BlobStore", "Claim", "EvaluationFilter", "NewEvaluation", "Store"]
