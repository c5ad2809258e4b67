#!/usr/bin/env python3
"""Writes two sides of synthetic sweep reports for timing `twolayer compare`
at scale (issue 35: a 10,000-point comparison in about a second).

    python3 scripts/large_reports.py TEMPLATE.json OUT POINTS SAMPLES PROCESSES

TEMPLATE.json is any report `twolayer sweep` wrote (its first point is the
pattern). OUT/base and OUT/current each get PROCESSES folders run0.. holding a
report of POINTS points of SAMPLES step times: the current side 2% slower, each
process scaled by its own log-normal factor (sd 5%), each step by up to 10%.
Then, for instance:

    time twolayer compare OUT/base/run0/report.json OUT/current/run0/report.json
    time twolayer compare OUT/base OUT/current --paired
"""
import json
import os
import random
import sys


def main():
    template, out, points, samples, processes = sys.argv[1:6]
    points, samples, processes = int(points), int(samples), int(processes)
    report = json.load(open(template))
    first = report["points"][0]
    for side, slower in (("base", 1.0), ("current", 1.02)):
        for k in range(processes):
            rnd = random.Random(f"{side}{k}")
            pts = []
            for i in range(points):
                p = dict(first)
                p["ms_per_step"] = dict(first["ms_per_step"])
                p["n"] = first["n"] + i
                proc = rnd.lognormvariate(0, 0.05)
                s = [slower * proc * (1 + 0.1 * rnd.random()) for _ in range(samples)]
                p["ms_per_step"]["samples"] = s
                p["ms_per_step"]["median"] = sorted(s)[samples // 2]
                p["steps_timed"] = samples
                p["gemm_ms_samples"] = [0.3 * x for x in s]
                pts.append(p)
            folder = os.path.join(out, side, f"run{k}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "report.json"), "w") as f:
                json.dump(dict(report, points=pts), f)


if __name__ == "__main__":
    main()
