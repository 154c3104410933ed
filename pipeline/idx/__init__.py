"""The IDX codec: header parsing, the streaming validating reader, and the writer."""

from idxlake.pipeline.idx.header import MAX_PAYLOAD_BYTES, IdxHeader, parse_header
from idxlake.pipeline.idx.read import DEFAULT_CHUNK_BYTES, IdxDigest, IdxFile, read_idx, scan_idx
from idxlake.pipeline.idx.write import idx_header, write_idx, write_idx_chunks

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "IdxDigest",
    "IdxFile",
    "IdxHeader",
    "MAX_PAYLOAD_BYTES",
    "idx_header",
    "parse_header",
    "read_idx",
    "scan_idx",
    "write_idx",
    "write_idx_chunks",
]
