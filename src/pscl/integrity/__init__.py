"""What keeps a run's files trustworthy: safe loading, content hashes, atomic writes, finite weights."""

from pscl.integrity.files import atomic_write_bytes, atomic_write_text, copy_atomic, file_lock
from pscl.integrity.finite import NonFiniteError, assert_finite, first_non_finite
from pscl.integrity.hashing import content_hashes, hash_file, hash_files
from pscl.integrity.loading import UnsafeCheckpointError, load_weights

__all__ = [
    "NonFiniteError", "UnsafeCheckpointError", "assert_finite", "atomic_write_bytes", "atomic_write_text",
    "content_hashes", "copy_atomic", "file_lock", "first_non_finite", "hash_file", "hash_files", "load_weights",
]
