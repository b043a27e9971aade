"""Storage: tables, repository functions, migrations and content-addressed blobs."""

from crucible.store.blobs import BlobStore
from crucible.store.cluster import Cluster, WorkerInfo
from crucible.store.repo import (
    BatchCounts,
    Claim,
    EvaluationFilter,
    NewEvaluation,
    RecordPage,
    Store,
)

__all__ = [
    "BatchCounts",
    "BlobStore",
    "Claim",
    "Cluster",
    "EvaluationFilter",
    "NewEvaluation",
    "RecordPage",
    "Store",
    "WorkerInfo",
]
