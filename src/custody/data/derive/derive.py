"""A sealed source replica into a sealed derivative replica, one tensor at a time.

The source's safetensors files are read tensor by tensor through their sealed chunks (only the
chunks a tensor spans are decrypted), each tensor is transformed and marked in memory, and the
output is streamed through the same sealing pipeline a copy uses. Small files that describe the
model (config, tokenizer, card) come along re-sealed; any other file is left out, so nothing
that might hold weights passes through unchanged. The data plane decides nothing: it is handed
the recipe, the mark and the keys, and reports digests, sizes, timings and sketches back.
"""

from __future__ import annotations

import json
import posixpath
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from custody.data import copier, sealed
from custody.data.derive import layout as layouts
from custody.data.derive import marks, sketch
from custody.data.derive.transforms import SourceTensor, TensorPlan, Transformer, plan
from custody.data.formats import safetensors
from custody.data.replica_files import open_sealed
from custody.data.sealed_io import ChunkPipeline, spot_check
from custody.data.tensors import CachedReader
from custody.data.zones import ZoneStorage
from custody.domain.errors import IntegrityError, InvalidInput
from custody.domain.manifest import FileEntry, Manifest
from custody.domain.recipes import Recipe

Progress = Callable[[int], None]
DESCRIBING = (".json", ".txt", ".md", ".model", ".tiktoken", ".yaml", ".yml", ".jinja")
MAX_DESCRIBING = 64 * 1024 * 1024
INDEX_SUFFIX = ".safetensors.index.json"
GGUF_FILE = "model.gguf"


@dataclass
class DeriveReport:
    manifest: Manifest
    bytes: int  # plaintext bytes written
    bytes_sealed: int
    seconds: float
    source_bytes: int
    marked: tuple[str, ...]  # tensors that carry the recipient's mark
    sketches: tuple[tuple[str, str, int, int, bytes], ...]  # (file, tensor, rows, cols, sketch)
    left_out: tuple[str, ...] = ()
    resumed_chunks: int = 0
    tensors: int = field(default=0)


@dataclass(frozen=True)
class Keys:
    src_replica: str
    src_key_id: str
    src_dek: bytes
    dst_replica: str
    dst_key_id: str
    dst_dek: bytes


def derive_replica(src: ZoneStorage, dst: ZoneStorage, keys: Keys, manifest: Manifest, recipe: Recipe,
                   mark: marks.MarkSpec | None, sketch_key: bytes, metadata: dict[str, str],
                   progress: Progress | None = None, derivative: bool = True) -> DeriveReport:
    """Write the derivative of the source replica's files into the destination replica.

    `derivative` False: a marked copy (an empty recipe): every safetensors file is marked under its
    own name and every other file is copied as it is (and reported as unmarked)."""
    started = time.perf_counter()
    weights = [f for f in manifest.files if f.path.endswith(".safetensors")]
    if not weights and derivative:
        raise InvalidInput("a derivative is made from safetensors weights; this version has none")
    if derivative:
        describing = [f for f in manifest.files if f.path.endswith(DESCRIBING) and not f.path.endswith(INDEX_SUFFIX)
                      and f.size <= MAX_DESCRIBING]
    else:
        describing = [f for f in manifest.files if f not in weights]
    left_out = tuple(f.path for f in manifest.files if f not in weights and f not in describing)
    with ExitStack() as stack:
        readers = {f.path: CachedReader(stack.enter_context(
            open_sealed(src, keys.src_replica, keys.src_key_id, f.path, keys.src_dek))) for f in weights}
        headers = {path: safetensors.parse_header(r.read_at, r.reader.plaintext_size, name=path)
                   for path, r in readers.items()}
        sources = [SourceTensor(info.name, info.dtype, info.shape, path)
                   for path, header in headers.items() for info in header.tensors.values()]
        plans = plan(recipe, sources, mark) if sources else []
        if mark is not None and not any(p.marked for p in plans) and (derivative or weights):
            raise InvalidInput("no weight matrix of this copy can carry its recipient's mark (2-D float matrices "
                               "other than embeddings, norms and the output head): it would leave untraceable")
        transformer = Transformer(recipe, mark)
        sketches: list[tuple[str, str, int, int, bytes]] = []
        files: list[tuple[str, list[TensorPlan]]]
        if recipe.output == "gguf":
            files = [(GGUF_FILE, plans)]
        else:
            files = [(path, [p for p in plans if p.source.file == path]) for path in headers]
            files = [(path, ps) for path, ps in files if ps]
        entries, sealed_total, written, changed = [], 0, 0, 0
        for rel, file_plans in files:
            if recipe.output == "gguf":
                lay = layouts.gguf_layout(file_plans, metadata, metadata.get("name", "derivative"))
            else:
                kept_meta = dict(headers[rel].metadata)
                kept_meta.update({f"custody.{k}": v for k, v in metadata.items()})
                lay = layouts.safetensors_layout(file_plans, kept_meta)
            chunks = _DerivedChunks(rel, lay, file_plans, readers, headers, transformer, sketch_key, sketches)
            header = sealed.new_header(_uuid(keys.dst_replica), _uuid(keys.dst_key_id), rel, sealed.DEFAULT_CHUNK_SIZE)
            out_rel = dst.sealed_path(keys.dst_replica, rel)
            chunks.start()
            try:
                size = copier.write_sealed(dst, out_rel, header, keys.dst_dek, chunks, progress)
            finally:
                chunks.cancel()
                chunks.join()
            spot_check(dst, out_rel, keys.dst_dek, header, size)
            changed += chunks.changed
            entries.append(FileEntry(rel, lay.size, chunks.digest()))
            sealed_total += size
            written += lay.size
        if derivative and recipe.output == "safetensors" and any(f.path.endswith(INDEX_SUFFIX) for f in manifest.files):
            index = _index(files, entries)
            entries.append(_write_small(dst, keys, index[0], index[1]))
    if describing:
        copied = copier.copy_replica(src, keys.src_replica, keys.src_key_id, keys.src_dek, Manifest.of(describing),
                                     dst, keys.dst_replica, keys.dst_key_id, keys.dst_dek, progress)
        entries += describing
        sealed_total += copied.bytes_sealed
        written += copied.bytes
    out = Manifest.of(entries)
    if derivative and not changed:
        raise InvalidInput(f"recipe {recipe.text} changes none of the weights it keeps: a derivative holding its "
                           "parent's weights unchanged is a copy (ask for a research copy)")
    return DeriveReport(out, written, sealed_total, time.perf_counter() - started,
                        sum(f.size for f in weights), tuple(p.source.name for p in plans if p.marked),
                        tuple(sketches), left_out if derivative else tuple(f.path for f in describing),
                        tensors=len(plans))


def _uuid(value: str):  # noqa: ANN202
    from uuid import UUID

    return UUID(value)


def _index(files: list[tuple[str, list[TensorPlan]]], entries: list[FileEntry]) -> tuple[str, bytes]:
    weight_map = {o.name: rel for rel, ps in files for p in ps for o in p.outputs}
    doc = {"metadata": {"total_size": sum(e.size for e in entries)}, "weight_map": dict(sorted(weight_map.items()))}
    name = posixpath.join(posixpath.dirname(files[0][0]), "model" + INDEX_SUFFIX) if files else "model" + INDEX_SUFFIX
    return name.lstrip("/"), json.dumps(doc, indent=2).encode()


def _write_small(dst: ZoneStorage, keys: Keys, rel: str, data: bytes) -> FileEntry:
    chunks = _BytesChunks(rel, data)
    header = sealed.new_header(_uuid(keys.dst_replica), _uuid(keys.dst_key_id), rel, sealed.DEFAULT_CHUNK_SIZE)
    out_rel = dst.sealed_path(keys.dst_replica, rel)
    chunks.start()
    try:
        size = copier.write_sealed(dst, out_rel, header, keys.dst_dek, chunks)
    finally:
        chunks.cancel()
        chunks.join()
    spot_check(dst, out_rel, keys.dst_dek, header, size)
    return FileEntry(rel, len(data), chunks.digest())


class _Filling(ChunkPipeline):
    """Cuts a stream of byte pieces into the pipeline's chunk buffers."""

    def _pieces(self):  # noqa: ANN202
        raise NotImplementedError

    def _produce(self) -> None:
        index, buf, n = 0, self._take(), 0
        if buf is None:
            return
        for piece in self._pieces():
            view = memoryview(piece).cast("B")
            if len(view) and index == self.n_chunks:
                raise IntegrityError(f"{self.name}: more bytes than the planned layout holds")
            while len(view):
                take = min(len(view), self.chunk_size - n, len(buf) - n)
                buf[n:n + take] = view[:take]
                n += take
                view = view[take:]
                if n == min(self.chunk_size, self.size - index * self.chunk_size):
                    self._emit(index, buf, n)
                    index, n = index + 1, 0
                    if index == self.n_chunks:
                        break
                    buf = self._take()
                    if buf is None:
                        return
        if index != self.n_chunks:
            raise IntegrityError(f"{self.name}: the planned layout and the bytes produced disagree")


class _BytesChunks(_Filling):
    def __init__(self, name: str, data: bytes) -> None:
        super().__init__(name, len(data), sealed.DEFAULT_CHUNK_SIZE)
        self._data = data

    def _pieces(self):  # noqa: ANN202
        yield self._data


class _DerivedChunks(_Filling):
    """The derivative file's bytes: the layout's preamble, then each tensor as it is transformed."""

    def __init__(self, name: str, lay: layouts.Layout, plans: list[TensorPlan], readers: dict, headers: dict,
                 transformer: Transformer, sketch_key: bytes, sketches: list) -> None:
        super().__init__(name, lay.size, sealed.DEFAULT_CHUNK_SIZE)
        self._layout, self._plans, self._readers, self._headers = lay, plans, readers, headers
        self._transformer, self._sketch_key, self._sketches = transformer, sketch_key, sketches
        self.changed = 0  # tensors whose values the recipe or the mark changed

    def _pieces(self):  # noqa: ANN202
        yield self._layout.preamble
        padding = iter(self._layout.padding)
        for p in self._plans:
            source = self._read(p)
            arrays = self._transformer.apply(p, source)
            if p.source.dtype in ("F16", "BF16", "F32", "F64"):
                values = _dequantized(p, arrays)
                found = sketch.of(self._sketch_key, values)
                if found is not None:
                    rows, cols = sketch.matrix_shape(tuple(values.shape))
                    self._sketches.append((self.name, p.source.name, rows, cols, sketch.to_bytes(found)))
            if not (len(arrays) == 1 and arrays[0].dtype == source.dtype and np.array_equal(arrays[0], source)):
                self.changed += 1
            del source
            for array, output in zip(arrays, p.outputs):
                if array.nbytes != output.nbytes:
                    raise IntegrityError(f"{p.source.name}: {array.nbytes} bytes where the layout planned {output.nbytes}")
                yield np.ascontiguousarray(array).view(np.uint8).reshape(-1)
                pad = next(padding)
                if pad:
                    yield bytes(pad)

    def _read(self, p: TensorPlan) -> np.ndarray:
        reader, header = self._readers[p.source.file], self._headers[p.source.file]
        info = header.tensors[p.source.name]
        raw = reader.read_at(header.data_start + info.begin, info.end - info.begin)
        return np.frombuffer(raw, dtype=safetensors.numpy_dtype(info.dtype)).reshape(info.shape)


def _dequantized(p: TensorPlan, arrays: list[np.ndarray]) -> np.ndarray:
    """The values a derivative's tensor stands for, for its identity sketch."""
    from custody.data.derive.transforms import dequantize_int4, dequantize_int8

    kind = p.outputs[0].kind
    if kind == "I8":
        return dequantize_int8(arrays[0], arrays[1])
    if kind == "U8":
        return dequantize_int4(arrays[0], arrays[1])
    if kind in ("Q8_0", "Q4_0"):
        from gguf import GGMLQuantizationType, quants

        return quants.dequantize(arrays[0], GGMLQuantizationType[kind])
    return arrays[0].astype(np.float32)
