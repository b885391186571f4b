"""Benchmark: the codec of a run store's ``bold`` chunks — size on disk, write and read cost.

One simulated run (:func:`daskglm.datasets.simulate_fiac`, int16 ``.nii.gz``)
is ingested into a store once per codec, on dask's synchronous scheduler (one
thread: CPU and wall are those of the work itself), with and without
smoothing (what a store holds: masked float32, smoothed or not). For each codec:

* ``size``: bytes of the store's files (``bold`` and the small arrays), and
  the ratio to the uncompressed store of the same run (zarr writes edge chunks
  whole: an uncompressed store also holds their padding, which compresses away;
  the size of ``bold`` without it is printed first);
* ``ingest``: wall and CPU (this process, all threads) of ``ingest_run``
  (read the ``.nii.gz``, smooth, mask, encode, write);
* ``write``: wall and CPU of writing the same ``bold`` array, already in
  memory, into a new zarr array of the store's chunks and codecs (the codec's
  share of ingestion, alone);
* ``read``: wall and CPU of reading all of ``bold`` back through
  :func:`daskglm.store.open_run` in whole voxel columns, as a fit does
  (integrity checks included); files in the page cache (written just before).

Every codec's bytes codecs end with the crc32c checksum, as every store's.
The codecs run in turn within each repeat, in a rotated order; figures are
medians over ``--repeat``; ratios are within this invocation. What is read
back is compared with the uncompressed store's ``bold``: every codec must be
exact.

    python benchmarks/codec.py                         # fiac-sized run, 3 repeats
    python benchmarks/codec.py --size mni --repeat 3   # a 97x115x97 (MNI 2 mm) run of 300 scans
    python benchmarks/codec.py --size small --repeat 1 # a quick check

Data are generated once into $DASKGLM_BENCH_DATA (default ~/.cache/daskglm/bench).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zarr

SIZES = {
    "small": {"shape": (32, 36, 24), "n_scans": 60},
    "fiac": {"shape": (64, 64, 30), "n_scans": 191},
    "mni": {"shape": (97, 115, 97), "n_scans": 300},
}


def _blosc(cname: str, clevel: int, shuffle: str) -> Callable[[], list]:
    return lambda: [zarr.codecs.BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)]


def _zstd(level: int) -> Callable[[], list]:
    return lambda: [zarr.codecs.ZstdCodec(level=level)]


#: The codecs measured: name -> the compressor codecs before the crc32c checksum.
CODECS: dict[str, Callable[[], list]] = {
    "none": list,
    "zstd-1": _zstd(1),
    "zstd-3": _zstd(3),
    "blosc-lz4-shuffle-3": _blosc("lz4", 3, "shuffle"),
    "blosc-lz4-shuffle-5": _blosc("lz4", 5, "shuffle"),
    "blosc-lz4-bitshuffle-5": _blosc("lz4", 5, "bitshuffle"),
    "blosc-zstd-shuffle-1": _blosc("zstd", 1, "shuffle"),
    "blosc-zstd-shuffle-3": _blosc("zstd", 3, "shuffle"),
    "blosc-zstd-bitshuffle-1": _blosc("zstd", 1, "bitshuffle"),
    "blosc-zstd-bitshuffle-3": _blosc("zstd", 3, "bitshuffle"),
}


def codecs_of(name: str) -> list:
    return [*CODECS[name](), zarr.codecs.Crc32cCodec()]


@contextlib.contextmanager
def bold_codecs(name: str) -> Iterator[None]:
    """Stores created inside the block get codec ``name`` for ``bold`` (the other arrays keep theirs)."""
    from daskglm.store import zarrio

    original = zarrio.array_codecs

    def patched(compressor):  # ingestion asks for bold's codecs with compressor=None
        return codecs_of(name) if compressor is None else original(compressor)

    zarrio.array_codecs = patched
    try:
        yield
    finally:
        zarrio.array_codecs = original


@contextlib.contextmanager
def measured(into: dict, key: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into.setdefault(f"{key}_wall_s", []).append(time.perf_counter() - wall)
    into.setdefault(f"{key}_cpu_s", []).append(time.process_time() - cpu)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one(name: str, data: dict, fwhm: float | None, work: Path, results: dict, reference: dict) -> None:
    """Ingest, write and read with codec ``name``; append the figures to ``results``."""
    from daskglm.store import ingest_run, open_run

    store = work / f"{name}.zarr"
    with bold_codecs(name), measured(results, "ingest"):
        ingest_run(data["func1"], store, mask_img=data["mask"], smoothing_fwhm=fwhm, client="sync",
                   compressor=None)
    results.setdefault("store_bytes", []).append(folder_bytes(store))
    results.setdefault("bold_bytes", []).append(folder_bytes(store / "bold"))
    with measured(results, "read"):
        bold = open_run(store, columns=True)["bold"].data.compute(scheduler="sync")
    reference.setdefault("bold", bold)  # the first call's: the uncompressed store's
    results.setdefault("exact", []).append(bool(np.array_equal(bold, reference["bold"])))
    chunks = zarr.open_array(store / "bold", mode="r").chunks
    plain = work / f"{name}-write.zarr"
    with measured(results, "write"):
        array = zarr.create_array(plain, shape=bold.shape, chunks=chunks, dtype="float32",
                                  compressors=codecs_of(name), fill_value=0.0,
                                  config={"write_empty_chunks": True})
        array[...] = bold
    shutil.rmtree(plain)
    shutil.rmtree(store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="fiac")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fwhm", default="5,0", help="smoothing FWHMs in mm, 0 for none (default: %(default)s)")
    parser.add_argument("--codecs", default=",".join(CODECS), help="codec names (default: all)")
    parser.add_argument("--json", default=None, help="also write every measurement here")
    args = parser.parse_args(argv)

    from daskglm.datasets import simulate_fiac

    names = [n.strip() for n in args.codecs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        parser.error(f"unknown codecs {unknown}; known: {list(CODECS)}")
    if "none" not in names:
        names.insert(0, "none")  # the reference of sizes, ratios and exactness
    size = SIZES[args.size]
    root = Path(os.environ.get("DASKGLM_BENCH_DATA", Path.home() / ".cache" / "daskglm" / "bench"))
    data = simulate_fiac(data_dir=root, shape=size["shape"], n_scans=size["n_scans"], n_runs=1, seed=0)
    run_bytes = Path(data["func1"]).stat().st_size
    report: dict = {"size": args.size, **{k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
                    "run_file_bytes": run_bytes, "repeat": args.repeat, "python": sys.version.split()[0],
                    "zarr": zarr.__version__, "results": {}}
    print(f"run {data['func1']}: {'x'.join(map(str, size['shape']))} x {size['n_scans']} int16, "
          f"{run_bytes / 2**20:.1f} MiB .nii.gz", flush=True)
    for fwhm_text in args.fwhm.split(","):
        fwhm = float(fwhm_text) or None
        results: dict[str, dict] = {name: {} for name in names}
        reference: dict = {}
        with tempfile.TemporaryDirectory(prefix="daskglm-codec-") as tmp:
            work = Path(tmp)
            # The uncompressed store first, once, as the reference of exactness (not timed).
            one("none", data, fwhm, work, {}, reference)
            logical = reference["bold"].nbytes  # zarr stores edge chunks whole: the padding is on disk too
            print(f"fwhm {fwhm}: bold {reference['bold'].shape} float32 holds {logical / 2**20:.2f} MiB "
                  "(without the edge chunks' padding)", flush=True)
            for r in range(args.repeat):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    one(name, data, fwhm, work, results[name], reference)
                print(f"fwhm {fwhm}: repeat {r + 1}/{args.repeat} done", flush=True)
        base = {k: statistics.median(v) for k, v in results["none"].items() if k != "exact"}
        label = f"fwhm={fwhm or 0:g} mm"
        print(f"\n{args.size} run, {label}: medians of {args.repeat}; ratios to 'none' in parentheses")
        print(f"{'codec':26s} {'store MiB':>10s} {'smaller':>8s} {'ingest wall':>16s} {'ingest CPU':>16s} "
              f"{'write wall':>16s} {'write CPU':>16s} {'read wall':>16s} {'read CPU':>16s} exact")
        table = {}
        for name in names:
            med = {k: statistics.median(v) for k, v in results[name].items() if k != "exact"}
            table[name] = {**med, "exact": all(results[name]["exact"]), "all": results[name]}
            cells = [f"{med[f'{k}_{w}_s']:6.3f} ({med[f'{k}_{w}_s'] / base[f'{k}_{w}_s']:4.2f}x)"
                     for k in ("ingest", "write", "read") for w in ("wall", "cpu")]
            print(f"{name:26s} {med['store_bytes'] / 2**20:10.2f} {base['store_bytes'] / med['store_bytes']:7.2f}x "
                  + " ".join(f"{c:>16s}" for c in cells) + f" {table[name]['exact']}")
        report["results"][label] = table
        report.setdefault("bold_bytes_without_padding", {})[label] = logical
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
