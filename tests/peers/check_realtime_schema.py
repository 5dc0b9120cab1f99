"""Checks openapi/realtime.schema.json against itself and against openapi/realtime.md.

Usage: check_realtime_schema.py [REPO_ROOT]   (default: the repository this file is in)

- the schema is a valid draft 2020-12 schema;
- every op the document gives a heading under "Client frames" or "Server frames" has a
  definition on that side (x-client-ops, x-server-ops), and every definition has a heading;
- each definition's `op` is that op, and $defs/ClientFrame and $defs/ServerFrame offer exactly
  those definitions;
- every JSON example in those two sections matches its side's frame schema (formats checked).

Prints one line with what it checked; exits 1 with every problem found otherwise.
"""

import json
import os
import re
import sys

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

SIDES = {"client": "## Client frames", "server": "## Server frames"}


def sections(doc):
    """The text of each side's section: from its heading to the next level-2 heading."""
    out = {}
    for side, heading in SIDES.items():
        start = doc.find(heading + "\n")
        if start < 0:
            raise SystemExit(f"realtime.md has no '{heading}' section")
        body = doc[start + len(heading) :]
        nxt = re.search(r"^## ", body, re.M)
        out[side] = body[: nxt.start()] if nxt else body
    return out


def doc_ops(text):
    """The ops with a heading in a section: "### `op`", optionally followed by "(server)"."""
    return re.findall(r"^### `([a-z_]+)`", text, re.M)


def examples(text):
    return [json.loads(b) for b in re.findall(r"^```json\n(.*?)^```", text, re.M | re.S)]


def main(root):
    problems = []
    with open(os.path.join(root, "openapi", "realtime.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    with open(os.path.join(root, "openapi", "realtime.md"), encoding="utf-8") as f:
        doc = f.read()

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        print(f"the schema is not a valid draft 2020-12 schema: {e.message} (at {'/'.join(map(str, e.absolute_path))})", file=sys.stderr)
        return 1
    if schema.get("$schema") != "https://json-schema.org/draft/2020-12/schema":
        problems.append("$schema is not draft 2020-12")
    checker = Draft202012Validator.FORMAT_CHECKER
    for fmt in ("uuid", "date-time"):
        if fmt not in checker.checkers:
            problems.append(f"jsonschema cannot check the {fmt} format here (install rfc3339-validator)")
    defs = schema.get("$defs", {})
    top = [s.get("$ref") for s in schema.get("oneOf", [])]
    if top != ["#/$defs/ClientFrame", "#/$defs/ServerFrame"]:
        problems.append(f"the top-level oneOf is {top}, not ClientFrame and ServerFrame")

    counted = {}
    for side, text in sections(doc).items():
        named = doc_ops(text)
        dups = sorted({op for op in named if named.count(op) > 1})
        if dups:
            problems.append(f"realtime.md names {side} ops more than once: {dups}")
        ops = schema.get(f"x-{side}-ops", {})
        for op in named:
            if op not in ops:
                problems.append(f"{side} op `{op}` is in realtime.md but has no definition in x-{side}-ops")
        for op in ops:
            if op not in named:
                problems.append(f"{side} op `{op}` has a definition but no heading in realtime.md")
        for op, ref in ops.items():
            name = ref.removeprefix("#/$defs/")
            d = defs.get(name)
            if d is None:
                problems.append(f"x-{side}-ops names {ref} for `{op}`, which is not in $defs")
            elif d.get("properties", {}).get("op") != {"const": op} or "op" not in d.get("required", []):
                problems.append(f"{ref} does not require op to be `{op}`")
        frame_def = defs.get(f"{side.capitalize()}Frame", {})
        offered = sorted(s.get("$ref", "") for s in frame_def.get("oneOf", []))
        if offered != sorted(ops.values()):
            problems.append(f"$defs/{side.capitalize()}Frame offers {offered}, not x-{side}-ops")

        root = {"$schema": schema.get("$schema"), "$defs": defs, "$ref": f"#/$defs/{side.capitalize()}Frame"}
        validator = Draft202012Validator(root, format_checker=checker)
        shown = examples(text)
        for ex in shown:
            if not list(validator.iter_errors(ex)):
                continue
            # Say what is wrong against the op's own definition when there is one.
            own = ops.get(ex.get("op"))
            v = Draft202012Validator(dict(root, **{"$ref": own}), format_checker=checker) if own else validator
            for e in list(v.iter_errors(ex)) or list(validator.iter_errors(ex)):
                where = "/".join(map(str, e.absolute_path)) or "(frame)"
                problems.append(f"a {side} example does not match: {json.dumps(ex)[:160]}: {where}: {e.message}")
        missing = sorted(set(named) - {ex.get("op") for ex in shown})
        if missing:
            problems.append(f"{side} ops without an example in realtime.md: {missing}")
        counted[side] = (len(named), len(shown))

    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(
        "realtime.schema.json: valid; "
        + "; ".join(f"{n} {side} ops defined and documented, {k} examples match" for side, (n, k) in counted.items())
    )
    return 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..")))
