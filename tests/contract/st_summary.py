#!/usr/bin/env python3
"""Summarizes the schemathesis runs of the contract tests.

    st_summary.py OUT_DIR RUN...

Each RUN is a name whose reports schemathesis wrote into OUT_DIR/schemathesis/NAME/ (the JSON run
report and the NDJSON event stream). Prints, per run, the failures by check (schemathesis' own
de-duplicated counts) and the errors; then the distinct causes over all runs: one line per
(check, status, first line of the message) with the runs and operations it was seen in and one
example request. Writes the same as JSON to OUT_DIR/schemathesis/summary.json.

Exits 1 when any run had a failure or an error, or did not complete.
"""

import base64
import glob
import json
import os
import re
import sys


def newest(pattern):
    files = sorted(glob.glob(pattern), key=os.path.getmtime)
    return files[-1] if files else None


def first_line(message):
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    # Numbers and ids vary between examples of one cause.
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", line)
    return line[:200]


def problem_key(response):
    """For a refused request: the problem code, and the first field error's code and pointer."""
    try:
        b = json.loads(body_of(response, 100000))
    except Exception:
        return ""
    if not isinstance(b, dict):
        return ""
    key = str(b.get("code", ""))
    errs = b.get("errors") or []
    if errs and isinstance(errs[0], dict):
        e = errs[0]
        pointer = "<an unknown property>" if e.get("code") == "unknown_field" else e.get("pointer", "")
        key += f" {e.get('code', '')} at {pointer}"
    elif key in ("invalid_body", "invalid_parameter"):
        key += " " + re.sub(r"`[^`]*`", "`…`", str(b.get("detail", "")))[:80]
    return key


def schema_at(message):
    m = re.search(r"Schema at (\S+):", message or "")
    return m.group(1) if m else ""


def body_of(response, limit=300):
    content = (response or {}).get("content") or {}
    if "$base64" in content:
        try:
            return base64.b64decode(content["$base64"]).decode(errors="replace")[:limit]
        except Exception:
            return "<binary>"
    return str(content)[:limit]


def main():
    out, runs = sys.argv[1], sys.argv[2:]
    summary = {"runs": {}, "causes": []}
    causes = {}
    bad = False
    for run in runs:
        d = os.path.join(out, "schemathesis", run)
        report = newest(os.path.join(d, "json-*.json"))
        events = newest(os.path.join(d, "ndjson-*.ndjson"))
        if not report:
            print(f"  {run}: no report (the run did not finish)")
            summary["runs"][run] = {"complete": False}
            bad = True
            continue
        with open(report) as f:
            r = json.load(f)
        by_check = {f"{x['code']} {x['title']}": x["count"] for x in r.get("failures", [])}
        errors = {x["title"]: x["count"] for x in r.get("errors", [])}
        total = sum(by_check.values())
        summary["runs"][run] = {
            "complete": r.get("complete"),
            "seconds": round(r.get("running_time", 0), 1),
            "operations": r.get("operations"),
            "test_cases": r.get("test_cases", {}).get("generated"),
            "failures": total,
            "failures_by_check": by_check,
            "errors": errors,
        }
        bad |= bool(total or errors or not r.get("complete"))
        print(f"  {run}: {total} failures, {sum(errors.values())} errors, "
              f"{r.get('test_cases', {}).get('generated')} cases, {r.get('running_time', 0):.0f} s")
        for k, v in sorted(by_check.items()):
            print(f"      {v:5d}  {k}")
        for k, v in sorted(errors.items()):
            print(f"      {v:5d}  error: {k}")
        if not events:
            continue
        with open(events) as f:
            for line in f:
                e = json.loads(line)
                if "NonFatalError" in e:
                    ne = e["NonFatalError"]
                    value = ne.get("value") or {}
                    key = ("error", "", f"{value.get('type', '')}: {first_line(value.get('message', ''))}")
                    c = causes.setdefault(key, {"check": "error", "status": "", "message": key[2], "runs": set(), "operations": set(), "example": {"operation": ne.get("label", "")}})
                    c["runs"].add(run)
                    c["operations"].add(ne.get("label", ""))
                    continue
                sf = e.get("ScenarioFinished")
                if not sf:
                    continue
                interactions = sf["recorder"].get("interactions", {})
                cases = sf["recorder"].get("cases", {})
                for case_id, checks in sf["recorder"].get("checks", {}).items():
                    for chk in checks:
                        if chk.get("status") != "failure":
                            continue
                        fi = (chk.get("failure_info") or {}).get("failure") or {}
                        inter = interactions.get(case_id) or {}
                        resp = inter.get("response") or {}
                        status = resp.get("status_code", "")
                        op = fi.get("operation") or sf["recorder"].get("label", "")
                        message = first_line(fi.get("message") or fi.get("title"))
                        if chk["name"] == "response_schema_conformance":
                            message += f" (schema at {schema_at(fi.get('message'))})"
                        elif chk["name"] in ("positive_data_acceptance", "status_code_conformance", "negative_data_rejection"):
                            message += f" [{problem_key(resp)}]"
                        key = (chk["name"], str(status), message)
                        c = causes.get(key)
                        if c is None:
                            case = (cases.get(case_id) or {}).get("value") or {}
                            req = inter.get("request") or {}
                            c = causes[key] = {
                                "check": chk["name"],
                                "code": fi.get("code"),
                                "status": str(status),
                                "message": key[2],
                                "runs": set(),
                                "operations": set(),
                                "example": {
                                    "operation": op,
                                    "request": f"{req.get('method', case.get('method', ''))} {req.get('uri', case.get('path', ''))}",
                                    "request_body": str(case.get("body", ""))[:300],
                                    "phase": sf.get("phase"),
                                    "status": status,
                                    "response_headers": {k: v for k, v in (resp.get("headers") or {}).items() if k.lower() in ("allow", "content-type", "location", "etag", "retry-after")},
                                    "response_body": body_of(resp),
                                    "detail": (fi.get("message") or "")[:1500],
                                },
                            }
                        c["runs"].add(run)
                        c["operations"].add(op)
    print()
    print(f"  distinct causes: {len(causes)}")
    for key, c in sorted(causes.items(), key=lambda kv: (kv[0][0], -len(kv[1]["operations"]))):
        ex = c["example"]
        runs_s = ",".join(sorted(c["runs"]))
        print(f"  - [{c['check']}] status {c['status'] or '-'}: {c['message']}")
        print(f"      {len(c['operations'])} operations, runs {runs_s}; e.g. {ex.get('operation', '')}")
        c["runs"], c["operations"] = sorted(c["runs"]), sorted(c["operations"])
        summary["causes"].append(c)
    with open(os.path.join(out, "schemathesis", "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
