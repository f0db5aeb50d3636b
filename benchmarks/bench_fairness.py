"""Is ``buildsys bench`` fair? One artifact timed three ways, taking turns, in one run:

- interleaved: ``buildsys bench`` as it is (a process per runner, rounds interleaved, the runners
  waiting for their turn stopped);
- interleaved, not stopped: the same processes left running between turns (a thread pool that
  spins after its work then spins into the next runner's turn);
- alone (``buildsys bench --alone``): one runner at a time, its process the only one, all its
  rounds in a row: what each runner does by itself.

Prints each runner's median ms per way and its ratio to alone, and the artifact's ratios to
eager and onnxruntime per way. Records nothing. Asserts nothing.

    python benchmarks/bench_fairness.py REF [--threads 2] [--rounds 5] [--number 10] [--repeats 2] [--compile]

REF is a key, prefix or alias in the registry (BUILDSYS_STORE / BUILDSYS_REGISTRY, or --store).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

WAYS = {"interleaved": {"mode": "interleaved"}, "interleaved, not stopped": {"mode": "interleaved", "freeze": False},
        "alone": {"mode": "alone"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref")
    parser.add_argument("--store", default=None)
    parser.add_argument("-c", "--config", default="builds.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=10)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=2, help="times each way is run, taking turns")
    parser.add_argument("--compile", action="store_true", help="torch.compile too (slow to set up)")
    args = parser.parse_args()

    from buildsys.ops.bench import bench_refs
    from buildsys.workspace import Workspace

    ws = Workspace(args.config, store=args.store)
    figures: dict[str, dict[str, list[float]]] = {way: {} for way in WAYS}
    ratios: dict[str, dict[str, list[float]]] = {way: {"vs_eager": [], "vs_onnxruntime": []} for way in WAYS}
    load = []
    for repeat in range(args.repeats):
        for way, options in WAYS.items():
            load.append(os.getloadavg()[0])
            print(f"[{repeat + 1}/{args.repeats}] {way} ...", flush=True)
            (result,) = bench_refs(ws, [args.ref], threads=args.threads, rounds=args.rounds, number=args.number,
                                   budget_s=args.budget, with_compile=args.compile, record=False, **options)
            for name, entry in result.runners.items():
                if "ms" in entry:
                    figures[way].setdefault(name, []).append(entry["ms"])
                elif repeat == 0:
                    print(f"  {name}: {entry.get('error')}")
            artifact = result.runners.get("artifact", {})
            for label in ("vs_eager", "vs_onnxruntime"):
                if f"ratio_{label}" in artifact:
                    ratios[way][label].append(artifact[f"ratio_{label}"])
    print(f"\n{result.label} ({result.key[:12]}), {result.cpu_model}; {args.threads} thread(s), {args.rounds} rounds "
          f"x {result.number} runs, {args.repeats} repeats (medians); load {min(load):.2f}-{max(load):.2f}")
    alone = {name: statistics.median(ms) for name, ms in figures["alone"].items()}
    names = sorted({n for way in figures.values() for n in way})
    print(f"{'way':26}" + "".join(f"{n + ' ms':>18}{'/alone':>8}" for n in names) + f"{'TVM/eager':>11}{'TVM/ORT':>9}")
    summary = {}
    for way in WAYS:
        cells = ""
        for name in names:
            ms = statistics.median(figures[way][name]) if figures[way].get(name) else None
            cells += f"{ms:18.2f}{ms / alone[name]:8.2f}" if ms and alone.get(name) else f"{'-':>18}{'-':>8}"
            summary.setdefault(way, {})[name] = ms
        r = {k: statistics.median(v) if v else None for k, v in ratios[way].items()}
        summary[way]["ratios"] = r
        cells += "".join(f"{v:11.2f}x" if v else f"{'-':>12}" for v in (r["vs_eager"], r["vs_onnxruntime"]))
        print(f"{way:26}{cells}")
    print(json.dumps({"ref": result.key, "threads": args.threads, "load": [min(load), max(load)], "ways": summary}))


if __name__ == "__main__":
    main()
