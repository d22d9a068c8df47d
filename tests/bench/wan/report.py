#!/usr/bin/env python3
"""Turns a benchmark run's results.jsonl into a short Markdown report.

    report.py RESULTS_JSONL > results.md

Loopback figures (one line per Report() of the tests/bench programs) become
one table per program; WAN figures (tests/bench/wan/wan_bench.sh) become one
table with a column per link profile. Lines that are not JSON are skipped.
"""
import json
import sys


def cell(s):
    return str(s).replace("|", "\\|")


def fmt(v):
    if isinstance(v, (int, float)):
        if abs(v) >= 1e4:
            return "{:,.0f}".format(v)
        return "{:.4g}".format(v)
    return str(v)


def main():
    rows = []
    for line in open(sys.argv[1]):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    local = [r for r in rows if r.get("bench") != "wan"]
    wan = [r for r in rows if r.get("bench") == "wan"]
    out = []
    benches = []
    for r in local:
        if r["bench"] not in benches:
            benches.append(r["bench"])
    for b in benches:
        out.append("### %s (loopback)\n" % b)
        out.append("| figure | value | unit | note |")
        out.append("|---|---:|---|---|")
        for r in local:
            if r["bench"] == b:
                out.append("| %s | %s | %s | %s |" % (cell(r["name"]), fmt(r["value"]),
                                                      r["unit"], cell(r.get("note", ""))))
        out.append("")
    if wan:
        profiles = []
        for r in wan:
            p = "%s ms / %s Mbit/s" % (r["rtt_ms"], r["rate_mbit"])
            r["_p"] = p
            if p not in profiles:
                profiles.append(p)
        names = []
        for r in wan:
            if r["name"] not in names:
                names.append(r["name"])
        val = {(r["name"], r["_p"]): r for r in wan}
        out.append("### over an emulated WAN link (RTT / rate)\n")
        out.append("| figure | " + " | ".join(profiles) + " | unit | note |")
        out.append("|---|" + "---:|" * len(profiles) + "---|---|")
        for n in names:
            cells = [fmt(val[(n, p)]["value"]) if (n, p) in val else "" for p in profiles]
            any_r = next(r for r in wan if r["name"] == n)
            out.append("| %s | %s | %s | %s |" % (cell(n), " | ".join(cells), any_r["unit"],
                                                  cell(any_r.get("note", ""))))
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
