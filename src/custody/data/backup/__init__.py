"""Deduplicated, encrypted backups of model files in a backup zone.

A repository (one per backup zone and asset lineage) stores content-addressed chunks under keys
derived from one master data key; a snapshot manifest lists each file's chunks and is the
control plane's signed record. This package is data plane only: it is handed keys, ids and
storage, and reports digests, sizes and timings.

Modules: `keys` (key derivation), `chunking` (where files are cut), `objects` (atomic object
I/O in a zone), `repository` (the chunk format), `snapshot` (the manifest), `sources` (plain
files or a sealed replica as input), `backup`, `fetching` (ordered parallel chunk reads),
`restore`, `verify`, `prune`, and `bench` (throughput figures for `make bench`).
"""

from custody.data.backup.backup import BackupReport, backup_replica
from custody.data.backup.chunking import PIECE_SIZE, Piece, plan
from custody.data.backup.keys import RepoKeys, derive
from custody.data.backup.prune import PruneReport
from custody.data.backup.repository import Repository
from custody.data.backup.restore import RestoreReport, iter_file, restore_to_replica
from custody.data.backup.snapshot import FileChunks, SnapshotManifest
from custody.data.backup.verify import VerifyReport

# The functions `backup`, `verify` and `prune` live in modules of the same names and are not
# re-exported here, so `from custody.data.backup import verify` keeps meaning the module.
__all__ = [
    "PIECE_SIZE",
    "BackupReport",
    "FileChunks",
    "Piece",
    "PruneReport",
    "RepoKeys",
    "Repository",
    "RestoreReport",
    "SnapshotManifest",
    "VerifyReport",
    "backup_replica",
    "derive",
    "iter_file",
    "plan",
    "restore_to_replica",
]
