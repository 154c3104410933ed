"""The ingest job: find sources, scan statistics and identity, decode ahead, write Parquet, commit once."""

from idxlake.pipeline.ingest.job import IngestResult, ingest
from idxlake.pipeline.ingest.sources import SplitSource, bundled_mnist, discover

__all__ = [
    "IngestResult",
    "SplitSource",
    "bundled_mnist",
    "discover",
    "ingest",
]
