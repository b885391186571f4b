"""Benchmark: how much faster two processes get through daskglm's work than one, without dask.

The ceiling against which "2 workers vs 1" (``compare.py --scaling``) is to be
read: the same task code that the workers run, driven by plain processes on
the synchronous scheduler (no scheduler, nanny, client or task overhead), one
process alone, then two at once on the two runs of the ``hcp`` data.

- ``ingest``: blocks of ``daskglm.store.ingest``'s ingestion tasks (read the int16
  ``.nii`` volumes, smooth, mask, write the zarr rows) into a fresh store;
- ``fit``: ``daskglm.kernels.regression.fit_block`` (AR(1)) on voxel columns of
  1200 scans held in memory (the fit's arithmetic without its column reads);
- ``write``: writing ``--write-mib`` MiB without daskglm, four ways: 1 MiB
  ``write`` calls into one new file (``new_file``: new page-cache pages),
  the same again into that file's cached pages (``cached_pages``), one
  1 MiB file per ``write`` through a temporary name and a rename as zarr's
  ``LocalStore`` writes a chunk (``chunk_files``), and zarr writing float32
  rows of 82 volumes in the hcp store's chunks (``zarr_rows``).

- ``memory``: first writes to ``--memory-mib`` MiB of new memory in each
  process (``after_rest``: 3 s after the previous process freed its own, the
  state of most memory a run touches for the first time; ``just_freed``:
  again at once after freeing it). On a VM whose balloon reports free pages
  to the host, the first costs a host page fault per page.

``ingest`` also reports its three parts per volume (reading, smoothing and
masking, and the rest: the zarr write and the block's flag), so that what
does not scale shows by name.

    python benchmarks/ceiling.py                 # all four, hcp data (generated once, cached)
    python benchmarks/ceiling.py --kind ingest --blocks 4
    python benchmarks/ceiling.py --kind write --write-mib 1000
    python benchmarks/ceiling.py --kind memory --memory-mib 4096
    # smoke test:
    python benchmarks/ceiling.py --size tiny --blocks 1 --columns 2 --write-mib 8 --memory-mib 8 --repeat 1

``speedup`` is (time of one process doing the work of both) / (wall of the
two processes doing half each): 2.0 would be perfect scaling.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _timed_parts(module: Any, names: dict[str, str]) -> dict[str, float]:
    """Wrap ``module``'s functions so that their wall times add up, by part name."""
    spent = dict.fromkeys(names.values(), 0.0)

    def timed(func: Any, part: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start
        return wrapper

    for name, part in names.items():
        target, attr = (module, name) if "." not in name else (getattr(module, name.split(".")[0]),
                                                                name.split(".")[1])
        setattr(target, attr, timed(getattr(target, attr), part))
    return spent


def _ingest_child(run: str, mask: str, blocks: int) -> dict:
    import dask

    from daskglm.runtime import plan as _plan
    from daskglm.store import ingest as store

    # the task's calls, looked up in daskglm.store.ingest at call time
    spent = _timed_parts(store, {"read_volumes": "read", "_volume.smooth_and_mask": "smooth_mask"})
    work = tempfile.mkdtemp(prefix="daskglm-ceiling-")
    try:
        with dask.config.set(scheduler="sync"):
            job = store._Ingestion(run, f"{work}/run.zarr", mask_img=mask, smoothing_fwhm=5.0, t_chunk=None,
                                   v_chunk=None, storage_options=None, compressor="auto", target=(None, None))
            job.reuse(False)
            job.prepare(None, "sync")
            tasks = job.tasks()[: blocks + 1]
            tasks[0].compute()  # untimed: compiles the smoothing, warms the imports
            timed = range(1, len(tasks)) if len(tasks) > 1 else range(1)  # a one-block run: that block again
            for part in spent:
                spent[part] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            for index in timed:
                tasks[index].compute()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        bounds = _plan.block_bounds(job.info.n_scans, job.plan.t_chunk)
        volumes = sum(bounds[index][1] - bounds[index][0] for index in timed)
        parts = {**spent, "write_rest": wall - sum(spent.values())}
        return {"wall_s": wall, "cpu_s": cpu, "units": volumes, "unit": "volume", "parts_s": parts}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fit_child(design: str, mask: str, columns: int) -> dict:
    import nibabel as nib
    import numpy as np

    from daskglm.kernels import regression as _kernels
    from daskglm.runtime import plan as _plan

    X = np.load(design)["X"]
    mask_img = nib.load(mask)
    n_voxels = int(np.count_nonzero(np.asarray(mask_img.dataobj)))
    width = _plan.plan_chunks(X.shape[0], n_voxels, int(np.prod(mask_img.shape))).v_chunk  # the fit's columns
    rng = np.random.default_rng(0)
    Y = (100 + rng.standard_normal((X.shape[0], width))).astype(np.float32)
    _kernels.fit_block(Y, X, noise_model="ar1", bins=100)  # untimed warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(columns):
        _kernels.fit_block(Y, X, noise_model="ar1", bins=100)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "units": columns, "unit": f"column of {width} voxels"}


def _write_child(mib: int) -> dict:
    import numpy as np
    import zarr

    buffer = bytes(range(256)) * 4096  # 1 MiB, touched before the clock starts
    # zarr: mib MiB of an ingestion block's float32 rows (82 volumes), chunked as the hcp store is
    rows = np.random.default_rng(0).random((82, (mib * 2**20) // (82 * 4)), dtype=np.float32)
    work = tempfile.mkdtemp(prefix="daskglm-ceiling-")
    try:
        path = Path(work) / "new.bin"
        parts, cpu = {}, {}

        def timed(part: str, func: Any) -> None:
            start, cpu[part] = time.perf_counter(), time.process_time()
            func()
            parts[part], cpu[part] = time.perf_counter() - start, time.process_time() - cpu[part]

        def one_file(mode: str) -> None:
            with open(path, mode) as out:
                for _ in range(mib):
                    out.write(buffer)

        def chunk_files() -> None:  # as zarr's LocalStore writes a chunk: a temporary file, then a rename
            folder = Path(work) / "chunks"
            for index in range(mib):
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f"{index}.partial"
                with open(tmp, "wb") as out:
                    out.write(buffer)
                tmp.replace(folder / str(index))

        def zarr_rows() -> None:
            array = zarr.create_array(store=str(Path(work) / "rows.zarr"), shape=rows.shape, chunks=(82, 2796),
                                      dtype="float32", compressors=None, fill_value=0.0)
            array[:] = rows

        timed("new_file", lambda: one_file("wb"))
        timed("cached_pages", lambda: one_file("r+b"))  # the pages the first pass made, rewritten
        timed("chunk_files", chunk_files)
        timed("zarr_rows", zarr_rows)
        return {"wall_s": parts["new_file"], "cpu_s": cpu["new_file"], "units": mib, "unit": "MiB written",
                "parts_s": parts, "parts_cpu_s": cpu}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _memory_child(mib: int) -> dict:
    """Write one float64 per 4 KiB page of ``mib`` MiB of new memory: first after 3 s of rest
    (memory freed before then: a guest with free-page reporting has handed it back to the host,
    which must fault each page in again), then again at once after freeing it (pages the guest
    still holds)."""
    import numpy as np

    time.sleep(3)  # Linux reports free pages to the host ~2 s after they are freed (at once where min_free_ms is 0)
    parts, cpu = {}, {}
    for part in ("after_rest", "just_freed"):
        start, cpu[part] = time.perf_counter(), time.process_time()
        block = np.empty(mib * 2**20 // 8)
        block[::512] = 1.0
        parts[part], cpu[part] = time.perf_counter() - start, time.process_time() - cpu[part]
        del block
    return {"wall_s": parts["after_rest"], "cpu_s": cpu["after_rest"], "units": mib, "unit": "MiB touched",
            "parts_s": parts, "parts_cpu_s": cpu}


#: The children of the kinds that need no data, by kind: each takes its MiB.
_SIZED_CHILDREN = {"write": _write_child, "memory": _memory_child}


def _spawn(args: list[str]) -> subprocess.Popen:
    # this checkout's daskglm first, as for compare.py's children
    from compare import _child_env

    env = {**_child_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--_child", *args], stdout=subprocess.PIPE, text=True, env=env)


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a ceiling child failed with exit code {proc.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _per_unit_ms(records: list[dict], key: str) -> float | None:
    values = [r[key] / r["units"] for r in records if r.get(key) is not None]
    return round(1000 * statistics.median(values), 2) if values else None


def _with_steal(run: Any) -> tuple[Any, float | None]:
    """``run()`` and the share of the machine's CPU time the hypervisor took meanwhile (steal)."""
    from compare import machine_cpu_times

    before = machine_cpu_times()
    result = run()
    after = machine_cpu_times()
    if before is None or after is None:
        return result, None
    delta = [b - a for a, b in zip(before, after)]
    return result, round(delta[7] / sum(delta), 3) if sum(delta) else None


def _measure(kind: str, child_args: list[list[str]], repeat: int) -> dict:
    alone, steal_alone = zip(*(_with_steal(lambda: _collect([_spawn(child_args[0])])[0]) for _ in range(repeat)))
    pairs, steal_pairs = zip(*(_with_steal(lambda: _collect([_spawn(a) for a in child_args]))
                               for _ in range(repeat)))
    t_alone = statistics.median(r["wall_s"] / r["units"] for r in alone)
    # the pair's wall: the slower of the two, per unit of its share
    t_pair = statistics.median(max(r["wall_s"] / r["units"] for r in pair) for pair in pairs)
    per_unit = {
        "alone_ms": round(1000 * t_alone, 2),
        "alone_cpu_ms": _per_unit_ms(alone, "cpu_s"),
        "two_at_once_ms": [[round(1000 * r["wall_s"] / r["units"], 2) for r in pair] for pair in pairs],
        "two_at_once_cpu_ms": [[_per_unit_ms([r], "cpu_s") for r in pair] for pair in pairs],
    }
    result = {"kind": kind, "unit": alone[0]["unit"], "repeat": repeat, "per_unit": per_unit,
              "speedup": round(2 * t_alone / t_pair, 2),
              "steal_share": {"alone": list(steal_alone), "two_at_once": list(steal_pairs)}}
    print(f"  {kind:7s} per {result['unit']}: alone {per_unit['alone_ms']} ms, two at once "
          f"{per_unit['two_at_once_ms']} ms -> two processes {result['speedup']:.2f}x one "
          f"(CPU time stolen by the hypervisor: alone {list(steal_alone)}, two at once {list(steal_pairs)})",
          flush=True)
    if "parts_s" in alone[0]:
        # per part: median per unit alone, and over both processes of every pair; a part that takes
        # twice as long when two run at once is one they queue for
        both = [r for pair in pairs for r in pair]
        result["parts"] = {}
        for part in alone[0]["parts_s"]:
            ms_alone = 1000 * statistics.median(r["parts_s"][part] / r["units"] for r in alone)
            ms_two = 1000 * statistics.median(r["parts_s"][part] / r["units"] for r in both)
            result["parts"][part] = {"alone_ms": round(ms_alone, 3), "two_at_once_ms": round(ms_two, 3),
                                     "slowdown": round(ms_two / ms_alone, 2) if ms_alone > 0 else None}
        print("          parts, ms per unit alone -> two at once: " + ", ".join(
            f"{part} {v['alone_ms']:.2f} -> {v['two_at_once_ms']:.2f} (x{v['slowdown']})"
            for part, v in result["parts"].items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="hcp", help="data size of compare.py (default hcp; tiny for a smoke test)")
    parser.add_argument("--kind", default="ingest,fit,write,memory",
                        help="comma-separated subset of ingest, fit, write, memory (default: all four)")
    parser.add_argument("--blocks", type=int, default=5, help="ingestion blocks timed per process (default 5)")
    parser.add_argument("--columns", type=int, default=40, help="fit columns timed per process (default 40)")
    parser.add_argument("--write-mib", type=int, default=1000, help="MiB each write process writes (default 1000)")
    parser.add_argument("--memory-mib", type=int, default=2048,
                        help="MiB of new memory each memory process touches (default 2048)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each kind (median; default 3)")
    parser.add_argument("--json", help="write the results there")
    parser.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        kind, *rest = args._child
        if kind in _SIZED_CHILDREN:
            result = _SIZED_CHILDREN[kind](int(rest[0]))
        else:
            result = (_ingest_child if kind == "ingest" else _fit_child)(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare import SIZES, _generate, _machine

    if args.size not in SIZES or SIZES[args.size]["n_runs"] < 2:
        parser.error(f"--size: choose one of {sorted(k for k, v in SIZES.items() if v['n_runs'] >= 2)}")
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    bad = sorted(set(kinds) - {"ingest", "fit", "write", "memory"})
    if bad or not kinds:
        parser.error(f"--kind: unknown {bad or args.kind!r}; choose from ingest, fit, write, memory")
    mib = {"write": args.write_mib, "memory": args.memory_mib}  # the kinds that need no data, sized in MiB
    for kind, value in mib.items():
        if value < 1:
            parser.error(f"--{kind}-mib: at least 1; got {value}")
    data = _generate(args.size) if set(kinds) - set(mib) else None
    results = {"machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "size": args.size, "kinds": {}}
    for kind in kinds:
        if kind in mib:
            child_args = [[kind, str(mib[kind])]] * 2
        elif kind == "ingest":
            child_args = [["ingest", str(data[f"func{r}"]), str(data["mask"]), str(args.blocks)] for r in (1, 2)]
        else:
            child_args = [["fit", str(data[f"design_matrix{r}"]), str(data["mask"]), str(args.columns)]
                          for r in (1, 2)]
        results["kinds"][kind] = _measure(kind, child_args, args.repeat)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
