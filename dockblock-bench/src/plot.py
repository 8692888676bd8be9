#!/usr/bin/env python3
"""Plots for `cargo xtask bench`: reads DIR/results.json, writes DIR/*.png.

Needs matplotlib (Debian: python3-matplotlib). Run: plot.py DIR
"""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1])
res = json.loads((out / "results.json").read_text())
parts = res.get("parts", {})
written = []


def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return (min(xs), max(xs)) if xs else (None, None)


# pps by variant: dropped by the filter (or received, for V0/V0x), per flood.
samples = parts.get("floods", {}).get("samples", [])
if samples:
    combos = []
    for s in samples:
        c = (s["generator"], s["flows"], s["proto"])
        if c not in combos:
            combos.append(c)
    variants = []
    for s in samples:
        if s["variant"] not in variants:
            variants.append(s["variant"])
    fig, axes = plt.subplots(len(combos), 1, figsize=(11, 2.6 * len(combos)), squeeze=False)
    for ax, (gen, flows, proto) in zip(axes[:, 0], combos):
        names, vals, errs, colors = [], [], [[], []], []
        for v in variants:
            pts = [s for s in samples if (s["variant"], s["generator"], s["flows"], s["proto"]) == (v, gen, flows, proto)]
            if not pts:
                continue
            key = "filter_dropped_mpps" if pts[0].get("filter_dropped_mpps") is not None else "received_mpps"
            xs = [p[key] for p in pts]
            m = med(xs)
            lo, hi = spread(xs)
            names.append(v)
            vals.append(m)
            errs[0].append(m - lo)
            errs[1].append(hi - m)
            colors.append("tab:green" if v.startswith("dockblock") else ("tab:gray" if v.startswith("v0") else "tab:blue"))
        ax.barh(names, vals, xerr=errs, color=colors)
        ax.invert_yaxis()
        ax.set_title(f"{gen}, {proto.upper()}, {'random source ports' if flows == 'many' else 'one flow'}", fontsize=9)
        ax.set_xlabel("Mpps dropped by the filter (grey: received, no filter)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "pps_by_variant.png", dpi=90)
    written.append("pps_by_variant.png")

# Latency under attack.
legit = parts.get("legit", {}).get("samples", [])
if legit:
    loads = sorted({s["load_pct"] for s in legit})
    variants = []
    for s in legit:
        if s["variant"] not in variants:
            variants.append(s["variant"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for v in variants:
        p99, tp = [], []
        for l in loads:
            pts = [s for s in legit if s["variant"] == v and s["load_pct"] == l]
            p99.append(med([(s.get("latency") or {}).get("p99_us") for s in pts]))
            tp.append(med([s.get("throughput_gbps") for s in pts]))
        a1.plot(loads, [x / 1000 if x else None for x in p99], marker="o", label=v)
        a2.plot(loads, tp, marker="o", label=v)
    a1.set_yscale("log")
    a1.set_xlabel("attack, % of no-filter capacity")
    a1.set_ylabel("p99 request latency (ms)")
    a2.set_xlabel("attack, % of no-filter capacity")
    a2.set_ylabel("iperf3 Gbit/s")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_under_attack.png", dpi=90)
    written.append("latency_under_attack.png")

# Cost by rule set.
sets = parts.get("cost", {}).get("sets", [])
if sets:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), sharey=True)
    labels = [s.get("label", str(s.get("blocked_ports"))) for s in sets]
    xs = list(range(len(sets)))
    for ax, hook in zip(axes, ["xdp", "tc"]):
        names = [p["packet"] for p in sets[0]["packets"] if p["hook"] == hook]
        colors = plt.get_cmap("tab20").colors
        for i, name in enumerate(names):
            ys = []
            for s in sets:
                q = [p for p in s["packets"] if p["hook"] == hook and p["packet"] == name]
                ys.append(med(q[0]["ns"]) if q else None)
            ax.plot(xs, ys, marker="os^vD"[i % 5], color=colors[i % len(colors)], label=name)
        ax.axhline(30, color="red", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{hook} program (red: 30 ns target)", fontsize=9)
        ax.set_ylabel("ns per packet (BPF_PROG_TEST_RUN, log)")
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "cost_by_rules.png", dpi=90)
    written.append("cost_by_rules.png")

# Rule scaling.
sc = parts.get("scaling", {}).get("samples", [])
if sc:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    variants = []
    for s in sc:
        if s["variant"] not in variants:
            variants.append(s["variant"])
    for v in variants:
        ns = sorted({s["ports"] for s in sc if s["variant"] == v})
        ys = [med([s["filter_dropped_mpps"] for s in sc if s["variant"] == v and s["ports"] == n]) for n in ns]
        ax.plot(ns, ys, marker="o", label=v)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("blocked ports (traffic spread over all)")
    ax.set_ylabel("Mpps dropped")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=90)
    written.append("scaling.png")

print("bench: plots: " + (", ".join(written) if written else "none (no data)"))
