"""`custody asset lineage`: an asset's family of derivatives, from the original down.

The graph is read from the signed lineage rows (control/store/lineage_repo.py): each edge names
the parent version and digest, the recipe and the request that made the child.
"""

from __future__ import annotations

from custody.control import views
from custody.control.door import act
from custody.control.store import lineage_repo as lr
from custody.control.store import repositories as repo
from custody.control.workspace import Workspace


def lineage(ws: Workspace, token: str | None, name: str) -> dict:
    """Every version related to asset `name` by derivation: nodes (versions) and edges (recipes)."""
    with act(ws, token, "asset.read", subject=name, details={"what": "lineage"}) as a:
        asset = repo.asset_by_name(a.uow, name)
        edges = lr.all_lineage(a.uow)
        parent = {e.version_id: e for e in edges}
        children: dict[str, list] = {}
        for e in edges:
            children.setdefault(e.parent_version_id, []).append(e)
        start = [v.id for v in repo.versions_of(a.uow, asset.id)]
        roots = set()
        for vid in start:
            seen = set()
            while vid in parent and vid not in seen:
                seen.add(vid)
                vid = parent[vid].parent_version_id
            roots.add(vid)
        family, todo = set(), list(roots)
        while todo:
            vid = todo.pop()
            if vid in family:
                continue
            family.add(vid)
            todo.extend(e.version_id for e in children.get(vid, ()))
        nodes = []
        for vid in sorted(family):
            v = repo.version_by_id(a.uow, vid)
            nodes.append({"version_id": vid, "asset": repo.asset_name_of_version(a.uow, v), "version": v.number,
                          "digest": v.digest, "classification": v.classification.value, "bytes": v.total_size,
                          "format": v.format})
        out_edges = [{"parent": e.parent_version_id, "child": e.version_id, "recipe": e.recipe,
                      "parent_digest": e.parent_digest, "request": e.request_id, "at": views.ts(e.created_at)}
                     for e in edges if e.version_id in family]
        return {"asset": name, "roots": sorted(roots), "nodes": nodes, "edges": out_edges}


def render(graph: dict) -> list[str]:
    """The graph as indented text lines, parents above their derivatives."""
    nodes = {n["version_id"]: n for n in graph["nodes"]}
    below: dict[str, list[dict]] = {}
    for e in graph["edges"]:
        below.setdefault(e["parent"], []).append(e)
    lines: list[str] = []

    def walk(vid: str, depth: int, recipe: str | None) -> None:
        n = nodes[vid]
        how = f"  <- {recipe}" if recipe else ""
        lines.append(f"{'    ' * depth}{n['asset']}@{n['version']}  {n['classification']}  {n['bytes']} bytes  "
                     f"{n['digest'][:12]}{how}")
        for e in sorted(below.get(vid, []), key=lambda e: e["at"] or ""):
            walk(e["child"], depth + 1, e["recipe"])

    for root in graph["roots"]:
        if root in nodes:
            walk(root, 0, None)
    return lines
