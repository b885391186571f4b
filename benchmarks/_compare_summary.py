"""compare.py's summaries: medians and ratios of each size's runs, and issue 7's targets."""

from __future__ import annotations

import os
import statistics
from typing import Any

MiB = 2**20


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summarise(size: str, spec: dict, records: list[dict], workers: int | None) -> dict:
    """Medians, ratios and the 2-vs-1-worker scaling of one size's records, printed and returned."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        key = r.get("tag", r["tool"])
        groups.setdefault(key, []).append(r)
    summary: dict[str, Any] = {"size": size, "shape": list(spec["shape"]), "n_scans": spec["n_scans"],
                               "n_runs": spec["n_runs"], "tools": {}}
    print(f"\n[{size}] summary over {len(records) // max(1, len({r['tag'] for r in records}))} repeat(s) "
          "(median; all values)")
    for key, rs in groups.items():
        walls = [round(r["wall_s"], 2) for r in rs]
        peaks = [round(r["peak_rss_bytes"] / MiB, 1) for r in rs]
        cpus = [round(r["cpu_s"], 2) for r in rs]
        machine = [round(r["machine_cpu_s"], 2) for r in rs if r.get("machine_cpu_s") is not None]
        entry = {"wall_s_median": _median(walls), "wall_s": walls, "cpu_s_median": _median(cpus), "cpu_s": cpus,
                 "machine_cpu_s_median": _median(machine), "machine_cpu_s": machine,
                 "peak_rss_mib_median": _median(peaks), "peak_rss_mib": peaks,
                 "phases_s_median": {k: round(_median([r["phases_s"][k] for r in rs]), 2)
                                     for k in rs[0]["phases_s"]}}
        if "roofline_s" in rs[0]:
            for name in ("roofline_s", "fit_alone_s", "fit_alone_compute_s", "roofline_cpu_s", "fit_alone_cpu_s"):
                entry[name] = [round(r[name], 2) for r in rs]
                entry[f"{name}_median"] = _median(entry[name])
            entry["fit_alone_over_roofline"] = round(entry["fit_alone_s_median"] / entry["roofline_s_median"], 2)
            entry["fit_alone_over_roofline_cpu"] = round(entry["fit_alone_cpu_s_median"]
                                                         / entry["roofline_cpu_s_median"], 2)
        summary["tools"][key] = entry
        print(f"  {key:11s} wall {entry['wall_s_median']:8.1f} s {walls}   CPU {entry['cpu_s_median']:8.1f} s {cpus}   "
              f"peak RSS {entry['peak_rss_mib_median']:7.0f} MiB {peaks}")
        if "roofline_s" in entry:
            print(f"  {'roofline':11s} pass {entry['roofline_s_median']:.2f} s {entry['roofline_s']}; fit alone "
                  f"{entry['fit_alone_s_median']:.2f} s {entry['fit_alone_s']} = "
                  f"{entry['fit_alone_over_roofline']:.1f}x roofline (CPU: {entry['fit_alone_cpu_s_median']:.1f} s vs "
                  f"{entry['roofline_cpu_s_median']:.1f} s, {entry['fit_alone_over_roofline_cpu']:.1f}x)")
    tools = summary["tools"]
    if "nilearn" in tools and "daskglm" in tools:
        n, d = tools["nilearn"], tools["daskglm"]
        summary["ratios"] = {
            "wall_nilearn_over_daskglm": round(n["wall_s_median"] / d["wall_s_median"], 2),
            "peak_nilearn_over_daskglm": round(n["peak_rss_mib_median"] / d["peak_rss_mib_median"], 2),
            "cpu_nilearn_over_daskglm": round(n["cpu_s_median"] / d["cpu_s_median"], 2),
        }
        print(f"  ratio      nilearn/daskglm: wall {summary['ratios']['wall_nilearn_over_daskglm']:.2f}x, "
              f"peak memory {summary['ratios']['peak_nilearn_over_daskglm']:.2f}x, "
              f"CPU time {summary['ratios']['cpu_nilearn_over_daskglm']:.2f}x")
    if "daskglm-w1" in tools and "daskglm" in tools:
        speedup = tools["daskglm-w1"]["wall_s_median"] / tools["daskglm"]["wall_s_median"]
        summary.setdefault("ratios", {})["wall_1_worker_over_2_workers"] = round(speedup, 2)

        def work(entry: dict) -> float:  # the phases the cluster's workers do
            return entry["phases_s_median"]["ingest"] + entry["phases_s_median"]["fit_compute"]

        work_speedup = work(tools["daskglm-w1"]) / work(tools["daskglm"])
        summary["ratios"]["ingest_and_fit_1_worker_over_2_workers"] = round(work_speedup, 2)
        print(f"  scaling    1 worker / default workers ({workers or 'one per core'}): {speedup:.2f}x "
              f"(whole process); {work_speedup:.2f}x over ingestion + fit (the workers' phases)")
        bound = _speedup_bound(tools["daskglm-w1"], os.cpu_count() or 1)
        if bound is not None:
            summary["ratios"]["speedup_bound_from_1_worker_cpu"] = round(bound, 2)
            print(f"  bound      {bound:.2f}x: {os.cpu_count()} cores x 1-worker wall / the machine's busy "
                  "CPU-seconds in the 1-worker run (what one worker per core reaches at best, doing no more "
                  "work than 1 and keeping both cores busy throughout)")
    return summary


def _speedup_bound(one_worker: dict, cores: int) -> float | None:
    """The most a cluster on ``cores`` cores can gain over the 1-worker run, by CPU time.

    The 1-worker run is not one core: zarr's write threads, the scheduler, the
    client and the kernel's page-cache writeback run beside its task thread.
    Two workers do at least the same CPU work and have ``cores`` cores, so their
    wall time is at least (busy CPU-seconds of the 1-worker run) / ``cores``.
    """
    busy = one_worker.get("machine_cpu_s_median")
    return None if not busy else cores * one_worker["wall_s_median"] / busy


def _targets(summaries: dict[str, dict]) -> list[dict]:
    """The performance targets (issues 7 and 29), for the sizes measured in this invocation."""
    out = []

    def check(name: str, value: float | None, limit: float, lower_is_better: bool = True) -> None:
        if value is None:
            return
        ok = value <= limit if lower_is_better else value >= limit
        out.append({"target": name, "value": round(value, 2), "limit": limit, "met": ok})

    for size, s in summaries.items():
        tools, ratios = s["tools"], s.get("ratios", {})
        d = tools.get("daskglm")
        if size == "hcp" and "wall_nilearn_over_daskglm" in ratios:
            check("hcp: nilearn wall / daskglm wall >= 3.5", ratios["wall_nilearn_over_daskglm"], 3.5, False)
        if size == "hcp" and d:
            check("hcp: daskglm peak (all processes) <= 2048 MiB", d["peak_rss_mib_median"], 2048)
        if size == "fiac" and "wall_nilearn_over_daskglm" in ratios:
            check("fiac: nilearn wall / daskglm wall >= 1", ratios["wall_nilearn_over_daskglm"], 1.0, False)
        if d and "fit_alone_over_roofline" in d:
            check(f"{size}: fit alone / roofline <= 3", d["fit_alone_over_roofline"], 3.0)
        if size == "hcp8" and d:
            check("hcp8: daskglm peak (all processes) <= 3072 MiB", d["peak_rss_mib_median"], 3072)
            hcp = summaries.get("hcp", {}).get("tools", {}).get("daskglm")
            if hcp:
                check("hcp8: wall / hcp wall <= 4.5", d["wall_s_median"] / hcp["wall_s_median"], 4.5)
        if size.startswith("subjects") and "loop-nilearn" in tools:  # the subject loop's targets
            base, least = tools["loop-nilearn"], 3.0 if size == "subjects" else 1.0
            for tag in ("loop-daskglm", "bids"):
                if tag in tools:
                    check(f"{size}: nilearn's loop wall / {tag} wall >= {least:g}",
                          tools[tag]["nilearn_loop_over_this"], least, False)
                    if size == "subjects":  # the memory target is the 8 subjects' (tiny: only "not slower")
                        check(f"{size}: {tag} peak <= nilearn's loop peak ({base['peak_rss_mib_median']:.0f} MiB)",
                              tools[tag]["peak_rss_mib_median"], base["peak_rss_mib_median"])
        if "wall_1_worker_over_2_workers" in ratios and size.startswith("hcp"):
            check(f"{size}: 1-worker wall / 2-worker wall >= 1.7", ratios["wall_1_worker_over_2_workers"], 1.7, False)
    return out
