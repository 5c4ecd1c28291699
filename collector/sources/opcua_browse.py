"""Discovery: what variables an OPC-UA server exposes under a root node, with their data type,
EngineeringUnits and EURange, and tag bindings built from them for a site file.

    controltower browse opc.tcp://host:4840 [--root NODE] [--depth N] [--include GLOB] [--exclude GLOB] [--yaml]

The walk follows hierarchical references (Organizes, HasComponent, ...) forward from the root,
skipping properties (they are read as the variable's metadata), the Server object (its
diagnostics are not process values) and, below a root outside namespace 0, namespace 0 nodes. Include/exclude globs
(`fnmatch`, case-sensitive) match a variable's browse path from the root (`lyon/usp/bio1/br101/ph`)
or its node id (`ns=2;s=lyon.usp.bio1.br101.ph`); a variable is listed if it matches some
include (or none is given) and no exclude.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from asyncua import Client, ua

from collector.sources.opcua_security import (
    SECURITY_MODES,
    SECURITY_POLICIES,
    ClientSecurity,
    OpcUaSecurityError,
    Pki,
    connect,
    secure_client,
)

OBJECTS_FOLDER = "i=85"
_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_SERVER_OBJECT = ua.NodeId(ua.ObjectIds.Server)  # its diagnostics are not process values
_INT_TYPES = {"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"}
_FLOAT_TYPES = {"Double", "Float"}
_TAG_ID_MAX = 64  # site.Identifier


@dataclass(frozen=True)
class BrowsedVariable:
    """One variable found under the root."""

    node_id: str  # e.g. "ns=2;s=lyon.usp.bio1.br101.temperature"
    path: str  # browse names from the root, "/"-joined, e.g. "Demo Pharma/lyon/usp/bio1/br101/temperature"
    display_name: str
    data_type: str  # name of the DataType node, e.g. "Double", "String"
    description: str = ""
    unit: str | None = None  # EngineeringUnits display name, e.g. "degC"
    eu_range: tuple[float, float] | None = None  # EURange (low, high)

    @property
    def parent_path(self) -> str:
        return self.path.rpartition("/")[0]


def _matches(var_path: str, node_id: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(var_path, pattern) or fnmatch.fnmatchcase(node_id, pattern)

    return (not include or any(hit(p) for p in include)) and not any(hit(p) for p in exclude)


async def collect_variables(
    url: str,
    root: str = OBJECTS_FOLDER,
    depth: int = 10,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    security: ClientSecurity | None = None,
    *,
    timeout: float = 4.0,
) -> list[BrowsedVariable]:
    """Variables up to `depth` levels under `root` (a node id string) that pass the include and
    exclude globs, in browse order. Raises OpcUaSecurityError, ua.UaError or OSError if the
    server cannot be reached or refuses the connection; ValueError for a malformed root."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    try:
        root_id = ua.NodeId.from_string(root)
    except ua.UaStringParsingError:
        raise ValueError(f"--root {root!r} is not a node id (e.g. i=85 or ns=2;s=lyon)") from None
    security = security or ClientSecurity()
    client = await secure_client(url, security, timeout=timeout)
    await connect(client, security)
    try:
        return await _walk(client, root_id, depth, include, exclude)
    finally:
        await client.disconnect()


async def _walk(
    client: Client, root_id: ua.NodeId, depth: int, include: Sequence[str], exclude: Sequence[str]
) -> list[BrowsedVariable]:
    found: list[BrowsedVariable] = []
    type_names: dict[ua.NodeId, str] = {}
    seen = {root_id}
    frontier: list[tuple[ua.NodeId, str]] = [(root_id, "")]
    for _level in range(depth):
        next_frontier: list[tuple[ua.NodeId, str]] = []
        for node_id, path in frontier:
            for ref in await _children(client, node_id):
                child = ref.NodeId
                if (
                    child in seen
                    or child == _SERVER_OBJECT
                    or (child.NamespaceIndex == 0 and root_id.NamespaceIndex != 0)
                ):
                    continue
                seen.add(child)
                child_path = f"{path}/{ref.BrowseName.Name}" if path else ref.BrowseName.Name
                if ref.NodeClass == ua.NodeClass.Variable and _matches(
                    child_path, child.to_string(), include, exclude
                ):
                    found.append(await _describe(client, child, child_path, type_names))
                next_frontier.append((child, child_path))
        frontier = next_frontier
        if not frontier:
            break
    return found


async def _children(client: Client, node_id: ua.NodeId) -> list[ua.ReferenceDescription]:
    refs = await client.get_node(node_id).get_references(
        refs=ua.ObjectIds.HierarchicalReferences,
        direction=ua.BrowseDirection.Forward,
        nodeclassmask=ua.NodeClass.Object | ua.NodeClass.Variable,
        includesubtypes=True,
    )
    return [r for r in refs if r.ReferenceTypeId != _HAS_PROPERTY]


async def _describe(
    client: Client, node_id: ua.NodeId, path: str, type_names: dict[ua.NodeId, str]
) -> BrowsedVariable:
    node = client.get_node(node_id)
    display, description, data_type = await node.read_attributes(
        [ua.AttributeIds.DisplayName, ua.AttributeIds.Description, ua.AttributeIds.DataType]
    )
    type_id = data_type.Value.Value if data_type.StatusCode.is_good() else None
    unit, eu_range = None, None
    for ref in await node.get_references(
        refs=ua.ObjectIds.HasProperty,
        direction=ua.BrowseDirection.Forward,
        nodeclassmask=ua.NodeClass.Variable,
    ):
        if ref.BrowseName.Name not in ("EngineeringUnits", "EURange"):
            continue
        try:
            value = await client.get_node(ref.NodeId).read_value()
        except ua.UaStatusCodeError:
            continue
        if ref.BrowseName.Name == "EngineeringUnits" and isinstance(value, ua.EUInformation):
            unit = value.DisplayName.Text or None
        elif (
            ref.BrowseName.Name == "EURange"
            and isinstance(value, ua.Range)
            and math.isfinite(value.Low)
            and math.isfinite(value.High)
        ):
            eu_range = (float(value.Low), float(value.High))
    return BrowsedVariable(
        node_id=node_id.to_string(),
        path=path,
        display_name=_text(display),
        data_type=await _type_name(client, type_id, type_names),
        description=_text(description),
        unit=unit,
        eu_range=eu_range,
    )


def _text(dv: ua.DataValue) -> str:
    value = dv.Value.Value if dv.Value is not None else None
    return (value.Text or "") if isinstance(value, ua.LocalizedText) else ""


async def _type_name(client: Client, type_id: ua.NodeId | None, cache: dict[ua.NodeId, str]) -> str:
    if type_id is None:
        return "?"
    if type_id not in cache:
        if type_id.NamespaceIndex == 0 and type_id.Identifier in ua.ObjectIdNames:
            cache[type_id] = ua.ObjectIdNames[type_id.Identifier]
        else:
            try:
                cache[type_id] = (
                    await client.get_node(type_id).read_display_name()
                ).Text or type_id.to_string()
            except ua.UaStatusCodeError:
                cache[type_id] = type_id.to_string()
    return cache[type_id]


# -- output ---------------------------------------------------------------------------------------


def tag_id_from(name: str) -> str:
    """A display name made into a site-file identifier (`^[A-Za-z0-9][A-Za-z0-9_\\-]*$`, 64 max)."""
    ident = re.sub(r"[^A-Za-z0-9_\-]+", "_", name.strip()).strip("_-")
    ident = re.sub(r"_+", "_", ident)
    ident = re.sub(r"^[^A-Za-z0-9]+", "", ident)
    return ident[:_TAG_ID_MAX].rstrip("_-") or "tag"


def site_data_type(opcua_type: str) -> str | None:
    """The site file's data_type for an OPC-UA type name; None if a tag cannot carry it."""
    if opcua_type in _FLOAT_TYPES:
        return "float"
    if opcua_type in _INT_TYPES:
        return "int"
    if opcua_type == "Boolean":
        return "bool"
    return None


def tag_binding(var: BrowsedVariable, tag_id: str) -> dict[str, Any]:
    """A tag of a site file (`controltower.site.Tag`) for the variable; EURange becomes alarm limits."""
    tag: dict[str, Any] = {"id": tag_id}
    if var.description and var.description != var.display_name:
        tag["description"] = var.description
    if var.unit:
        tag["unit"] = var.unit
    data_type = site_data_type(var.data_type)
    if data_type not in (None, "float"):
        tag["data_type"] = data_type
    if var.eu_range is not None and var.eu_range[0] < var.eu_range[1] and data_type != "bool":
        tag["limits"] = {"alarm_low": var.eu_range[0], "alarm_high": var.eu_range[1]}
    tag["opcua"] = {"node_id": var.node_id}
    return tag


def bindings_yaml(variables: Sequence[BrowsedVariable], *, url: str = "") -> str:
    """Tag bindings as YAML, one list: a comment names the parent of each group (paste a group
    under that unit's `tags:`); ids are unique within a group. Variables a tag cannot carry
    (strings, structures) are listed as comments at the end."""
    lines = [f"# Tags found on {url}; EURange is used as alarm limits (review them)." if url else ""]
    groups: dict[str, list[BrowsedVariable]] = {}
    skipped: list[BrowsedVariable] = []
    for var in variables:
        (skipped if site_data_type(var.data_type) is None else groups.setdefault(var.parent_path, [])).append(
            var
        )
    for parent, members in groups.items():
        used: set[str] = set()
        tags = []
        for var in members:
            base = tag_id_from(var.display_name or var.path.rpartition("/")[2])
            ident, n = base, 2
            while ident in used:
                suffix = f"_{n}"
                ident, n = base[: _TAG_ID_MAX - len(suffix)] + suffix, n + 1
            used.add(ident)
            tags.append(tag_binding(var, ident))
        lines.append(f"# {parent or '(root)'}")
        lines.append(
            yaml.safe_dump(
                tags, sort_keys=False, allow_unicode=True, width=200, default_flow_style=None
            ).rstrip("\n")
        )
    if skipped:
        lines.append("# Not numeric or boolean, so not tags:")
        lines.extend(f"#   {v.node_id} ({v.data_type})" for v in skipped)
    return "\n".join(line for line in lines if line) + "\n"


def variables_table(variables: Sequence[BrowsedVariable]) -> str:
    """A plain table: node id, display name, data type, unit, EURange."""
    rows = [("NODE ID", "DISPLAY NAME", "DATA TYPE", "UNIT", "EURANGE")]
    for v in variables:
        eu = f"{v.eu_range[0]:g} .. {v.eu_range[1]:g}" if v.eu_range else ""
        rows.append((v.node_id, v.display_name, v.data_type, v.unit or "", eu))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


# -- command line -------------------------------------------------------------------------------


def add_browse_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `controltower browse URL ...`."""
    parser.add_argument("url", help="server endpoint, opc.tcp://host:port/path")
    parser.add_argument(
        "--root", default=OBJECTS_FOLDER, help="node id to start from (default i=85, Objects)"
    )
    parser.add_argument("--depth", type=int, default=10, help="levels below the root to walk (default 10)")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="list only variables whose browse path or node id matches (repeatable)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out variables whose browse path or node id matches (repeatable)",
    )
    parser.add_argument("--yaml", action="store_true", help="print tag bindings to paste into a site file")
    parser.add_argument("--security-policy", default="None", choices=["None", *SECURITY_POLICIES])
    parser.add_argument(
        "--security-mode", choices=list(SECURITY_MODES), help="required with a security policy"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="relative certificate directories are under it (default data)",
    )
    parser.add_argument(
        "--certificate-dir", default="pki", help="collector certificate directory (default pki)"
    )
    parser.add_argument(
        "--trusted-dir", default="pki/trusted", help="trusted server certificates (default pki/trusted)"
    )
    parser.add_argument("--username")
    parser.add_argument("--password-env", metavar="VAR", help="environment variable holding the password")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds per request (default 4)")


def _security_from(args: argparse.Namespace) -> ClientSecurity:
    if args.security_policy != "None" and args.security_mode is None:
        raise ValueError(
            f"--security-policy {args.security_policy} needs --security-mode Sign or SignAndEncrypt"
        )
    if args.security_policy == "None" and args.security_mode is not None:
        raise ValueError("--security-mode needs a --security-policy")
    password = None
    if args.password_env:
        if not args.username:
            raise ValueError("--password-env needs --username")
        password = os.environ.get(args.password_env)
        if password is None:
            raise ValueError(f"--password-env names {args.password_env}, which is not set")
    pki = None
    if args.security_policy != "None":
        pki = Pki.under(args.data_dir / args.certificate_dir, args.data_dir / args.trusted_dir)
    return ClientSecurity(
        policy=args.security_policy,
        mode=args.security_mode,
        pki=pki,
        username=args.username,
        password=password,
        password_source=f"the password in ${args.password_env}"
        if args.password_env
        else "the password (none set)",
    )


def run_browse(args: argparse.Namespace) -> int:
    """Browse and print; 0 on success, 1 if the server could not be browsed, 2 for bad arguments."""
    try:
        security = _security_from(args)
        variables = asyncio.run(
            collect_variables(
                args.url, args.root, args.depth, args.include, args.exclude, security, timeout=args.timeout
            )
        )
    except ValueError as exc:
        print(f"controltower browse: {exc}", file=sys.stderr)
        return 2
    except OpcUaSecurityError as exc:
        print(f"controltower browse: {exc}", file=sys.stderr)
        return 1
    except (ua.UaError, OSError, TimeoutError) as exc:
        print(f"controltower browse: cannot browse {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not variables:
        print(
            f"controltower browse: no variables under {args.root} (depth {args.depth}) match", file=sys.stderr
        )
    sys.stdout.write(bindings_yaml(variables, url=args.url) if args.yaml else variables_table(variables))
    return 0
