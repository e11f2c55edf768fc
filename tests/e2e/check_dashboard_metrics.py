#!/usr/bin/env python3
"""Checks that every tern_* metric a Grafana dashboard queries is in the catalog.

usage: check_dashboard_metrics.py DASHBOARD.json METRICS.md

Collects the PromQL of every panel target (`expr`) and of every template
variable (`query`, `definition`), extracts the names matching tern_[a-z_]+,
strips the histogram suffixes _bucket/_sum/_count, and requires each name to
appear in the catalog as a whole word. Exits 1 listing the missing names.
"""
import json
import re
import sys

NAME = re.compile(r"tern_[a-z_]+")
SUFFIX = re.compile(r"_(bucket|sum|count)$")


def expressions(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        dashboard = json.load(f)
    with open(argv[2], encoding="utf-8") as f:
        catalog = f.read()
    names = set()
    for expr in expressions(dashboard):
        names.update(SUFFIX.sub("", n) for n in NAME.findall(expr))
    if not names:
        print(f"{argv[1]}: no tern_* metric found in any expression", file=sys.stderr)
        return 1

    def in_catalog(name):
        return re.search(r"(?<![A-Za-z0-9_])" + re.escape(name) + r"(?![A-Za-z0-9_])", catalog)

    missing = sorted(n for n in names if not in_catalog(n))
    for n in missing:
        print(f"{argv[1]}: metric {n} is not in {argv[2]}", file=sys.stderr)
    print(f"{len(names)} metric names checked, {len(missing)} missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
