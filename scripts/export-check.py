"""Reads modeltree's exports back with the tools people use and compares every count with the JSON export.

    python export-check.py --json J --graphml G --dot-svg S --png P --dom D --screenshot PNG --search-dom D2 --query Q

- GraphML through networkx.read_graphml: a directed graph with the same nodes, edges and typed attributes.
- The SVG Graphviz rendered from the DOT: one node group per model (plus the legend), one edge group per edge.
- The DOM headless Chromium dumped after running the page: the report's script ran, and the forest SVG holds one
  node group per model and one edge path per edge; opened as report.html#q=QUERY, the search box marks exactly the
  nodes whose id or license holds QUERY.
Prints the counts; exits 1 on the first mismatch.
"""

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import networkx as nx

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RELATIONS = {"finetune", "lora", "adapter", "quantized", "merge", "duplicate"}
SOURCES = {"weights", "metadata", "both"}
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def graphml(path, ids, edges):
    g = nx.read_graphml(path)
    check(g.is_directed(), "GraphML graph is directed")
    check(set(g.nodes) == ids, f"networkx nodes {g.number_of_nodes()} == models {len(ids)} (same ids)")
    got = {(u, v) for u, v in g.edges()}
    check(got == {(p, c) for p, c, _ in edges}, f"networkx edges {g.number_of_edges()} == edges {len(edges)}")
    for n, data in g.nodes(data=True):
        check("license_class" in data and "status" in data, f"node {n!r} has license_class and status")
    for u, v, data in g.edges(data=True):
        check(data.get("relation") in RELATIONS, f"edge {u}->{v} relation {data.get('relation')!r}")
        check(isinstance(data.get("confidence"), float) and 0 <= data["confidence"] <= 1, f"edge {u}->{v} confidence")
        check(data.get("source") in SOURCES, f"edge {u}->{v} source")
    print(f"networkx: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges")


def graphviz(svg_path, png_path, ids, edges):
    ns = {"svg": "http://www.w3.org/2000/svg"}
    root = ET.parse(svg_path).getroot()
    groups = root.findall(".//svg:g", ns)
    nodes = {g.findtext("svg:title", namespaces=ns) for g in groups if g.get("class") == "node"}
    n_edges = sum(1 for g in groups if g.get("class") == "edge")
    check(nodes == ids | {"modeltree:legend"}, f"graphviz nodes {len(nodes)} == models {len(ids)} + legend")
    check(n_edges == len(edges), f"graphviz edges {n_edges} == edges {len(edges)}")
    with open(png_path, "rb") as f:
        png = f.read()
    check(png.startswith(PNG_MAGIC) and len(png) > 1000, f"graphviz PNG ({len(png)} bytes)")
    print(f"graphviz: {len(nodes) - 1} model nodes + legend, {n_edges} edges, PNG {len(png)} bytes")


class Forest(HTMLParser):
    """Counts the node groups and edge paths inside <svg id="forest">, and reads <html data-ready>."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.nodes = []
        self.edges = 0
        self.ready = None
        self.searchable = []
        self.hits = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.ready = a.get("data-ready")
        if tag == "svg" and a.get("id") == "forest":
            self.depth = 1
        elif self.depth and tag == "svg":
            self.depth += 1
        classes = (a.get("class") or "").split()
        if self.depth and tag == "g" and "node" in classes:
            self.nodes.append(a.get("data-id"))
            self.searchable.append(((a.get("data-id") or "") + " " + (a.get("data-license") or "")).lower())
            self.hits.append("hit" in classes)
        if self.depth and tag == "path" and "edge" in classes:
            self.edges += 1

    def handle_endtag(self, tag):
        if self.depth and tag == "svg":
            self.depth -= 1


def chromium(dom_path, screenshot, ids, edges):
    with open(dom_path, encoding="utf-8") as f:
        dom = f.read()
    p = Forest()
    p.feed(dom)
    check(p.ready == str(len(ids)), f"the report's script ran (data-ready={p.ready!r}, expected {len(ids)})")
    check(len(p.nodes) == len(ids) and set(p.nodes) == ids, f"chromium SVG nodes {len(p.nodes)} == models {len(ids)}")
    check(p.edges == len(edges), f"chromium SVG edges {p.edges} == edges {len(edges)}")
    with open(screenshot, "rb") as f:
        png = f.read()
    check(png.startswith(PNG_MAGIC) and len(png) > 10_000, f"chromium screenshot ({len(png)} bytes)")
    print(f"chromium: {len(p.nodes)} SVG nodes, {p.edges} SVG edges, screenshot {len(png)} bytes")


def search(dom_path, query):
    """The page opened as report.html#q=QUERY: exactly the nodes whose id or license holds QUERY are marked."""
    with open(dom_path, encoding="utf-8") as f:
        p = Forest()
        p.feed(f.read())
    expected = [query.lower() in s for s in p.searchable]
    check(p.hits == expected and any(expected), f"search {query!r}: {sum(p.hits)} hits, expected {sum(expected)}")
    print(f"chromium search {query!r}: {sum(p.hits)} of {len(p.hits)} nodes highlighted")


def main():
    ap = argparse.ArgumentParser()
    for name in ["json", "graphml", "dot-svg", "png", "dom", "screenshot", "search-dom", "query"]:
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    with open(args.json, encoding="utf-8") as f:
        doc = json.load(f)
    ids = {m["id"] for m in doc["models"]}
    edges = [(e["parent"], e["child"], e["relation"]) for e in doc["edges"]]
    print(f"store: {len(ids)} models, {len(edges)} edges")
    check(len(ids) > 0 and len(edges) > 0, "the zoo produced models and edges")
    graphml(args.graphml, ids, edges)
    graphviz(args.dot_svg, args.png, ids, edges)
    chromium(args.dom, args.screenshot, ids, edges)
    search(args.search_dom, args.query)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("export check passed")


if __name__ == "__main__":
    main()
