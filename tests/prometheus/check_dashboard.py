#!/usr/bin/env python3
"""Check dashboards/mqtt-dynamo.json against a real Prometheus scraping mqtt-dynamo.

Standard library only. Steps:

1. Static checks on the dashboard JSON: uid/title, the `datasource` and `instance` variables, no
   hard-coded datasource uid, unique panel ids, panels inside the 24-column grid and not
   overlapping, every panel with a unit and a description, every metric selector filtered by
   `instance=~"$instance"`, no template variable the dashboard does not define, and the core panels
   (CORE_PANELS) present exactly once.
2. Fetch the exporter's /metrics once, lint it with `promtool check metrics` (stdin), and check that
   every mqtt_dynamo_* metric named in a panel query is in the exposition.
   With --catalogue FILE (the service's metric catalogue as JSON, which the Rust dashboard test
   writes from src/telemetry/catalogue.rs): every catalogue metric must be on the dashboard and the
   dashboard may name no other (a static check), and every catalogue metric must be in the
   exposition with the catalogue's type and exactly its label names, and the exposition may hold no
   mqtt_dynamo_* metric the catalogue lacks.
3. Start a throw-away Prometheus (temp config + temp TSDB, free loopback port) scraping the exporter
   every 1s, wait for /-/ready and for `up{job="mqtt-dynamo"} == 1` over at least 5 scrapes, and
   check that the `instance` variable (label_values(mqtt_dynamo_build_info, instance)) has a value.
4. Evaluate every panel query as an instant query (`$__rate_interval` -> 30s, `$__interval` -> 15s,
   `$instance` -> .*); any error fails. Core panels must return at least --core-min-points samples.
5. Always stop Prometheus and remove its temp dir; print a summary; exit 0 only if all passed.

Usage (from the repository root, with the service's exporter listening):

    python3 tests/prometheus/check_dashboard.py --dashboard dashboards/mqtt-dynamo.json \
        --metrics-url http://127.0.0.1:8095/metrics --prometheus /usr/bin/prometheus \
        --promtool /usr/bin/promtool --core-min-points 1 --timeout 60
"""

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

# Panels that must return data from a running service (titles as in the dashboard JSON).
CORE_PANELS = ("Ingest rate", "Items written/s", "DynamoDB request duration")

REQUIRED_ROWS = ("Overview", "Ingest", "Batching & coalescing", "DynamoDB", "Errors & drops")

JOB = "mqtt-dynamo"
METRIC_RE = re.compile(r"mqtt_dynamo_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
INSTANCE_FILTER = 'instance=~"$instance"'
# Grafana's own variables that we substitute or that are allowed in queries.
SUBSTITUTIONS = (
    ("${__rate_interval}", "30s"),
    ("$__rate_interval", "30s"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
    ("${instance}", ".*"),
    ("$instance", ".*"),
    ("${datasource}", "prometheus"),
    ("$datasource", "prometheus"),
)
VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
UP_SCRAPES = 5


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


# ----------------------------------------------------------------------------- dashboard parsing


def iter_panels(panels):
    """All panels, descending into collapsed rows' `panels`."""
    for p in panels or []:
        yield p
        if p.get("type") == "row":
            yield from iter_panels(p.get("panels"))


def iter_targets(dashboard):
    """(panel, target) for every query target of every non-row panel."""
    for p in iter_panels(dashboard.get("panels")):
        if p.get("type") == "row":
            continue
        for t in p.get("targets") or []:
            if isinstance(t, dict) and t.get("expr"):
                yield p, t


def metric_names(expr):
    """mqtt_dynamo_* names in an expression, histogram suffixes stripped to the base name."""
    names = set()
    for name in METRIC_RE.findall(expr):
        names.add(base_name(name))
    return names


def base_name(name):
    for suffix in HIST_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def substitute(expr):
    for var, value in SUBSTITUTIONS:
        expr = expr.replace(var, value)
    return expr


def unfiltered_selectors(expr):
    """Metric names in `expr` whose selector lacks instance=~"$instance"."""
    bad = []
    for m in METRIC_RE.finditer(expr):
        rest = expr[m.end():]
        if not rest.startswith("{"):
            bad.append(m.group(0))
            continue
        close = rest.find("}")
        if close < 0 or INSTANCE_FILTER not in rest[: close + 1]:
            bad.append(m.group(0))
    return bad


def find_datasource_uids(node, path="$"):
    """(path, uid) for every datasource object in the dashboard."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                if isinstance(v, dict):
                    out.append((f"{path}.{k}", v.get("uid")))
                elif isinstance(v, str):
                    out.append((f"{path}.{k}", v))
            out.extend(find_datasource_uids(v, f"{path}.{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(find_datasource_uids(v, f"{path}[{i}]"))
    return out


def static_checks(d):
    """Problems found in the dashboard JSON alone."""
    problems = []
    if d.get("uid") != "mqtt-dynamo":
        problems.append(f'uid is {d.get("uid")!r}, want "mqtt-dynamo"')
    if d.get("title") != "mqtt-dynamo":
        problems.append(f'title is {d.get("title")!r}, want "mqtt-dynamo"')

    variables = {v.get("name"): v for v in (d.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("templating: missing `datasource` variable of type datasource (query prometheus)")
    inst = variables.get("instance")
    if not inst:
        problems.append("templating: missing `instance` variable")
    else:
        q = inst.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q != "label_values(mqtt_dynamo_build_info, instance)":
            problems.append(f"templating: instance query is {q!r}")
        if not inst.get("multi") or not inst.get("includeAll"):
            problems.append("templating: instance must be multi with include All")

    for path, uid in find_datasource_uids(d):
        if uid != "${datasource}":
            problems.append(f"{path}: datasource uid {uid!r}, want \"${{datasource}}\"")

    ids = {}
    rows = []
    boxes = []
    for p in iter_panels(d.get("panels")):
        title = p.get("title", "?")
        pid = p.get("id")
        if pid is not None:
            if pid in ids:
                problems.append(f"panel id {pid} used by {ids[pid]!r} and {title!r}")
            ids[pid] = title
        gp = p.get("gridPos") or {}
        x, y, w, h = gp.get("x"), gp.get("y"), gp.get("w"), gp.get("h")
        if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
            problems.append(f"panel {title!r}: gridPos {gp} outside the 24-column grid")
        else:
            for other, (ox, oy, ow, oh) in boxes:
                if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                    problems.append(f"panel {title!r} overlaps {other!r}")
            boxes.append((title, (x, y, w, h)))
        if p.get("type") == "row":
            rows.append(title)
            continue
        if not (p.get("fieldConfig") or {}).get("defaults", {}).get("unit"):
            problems.append(f"panel {title!r}: no fieldConfig.defaults.unit")
        if not (p.get("description") or "").strip():
            problems.append(f"panel {title!r}: no description")
        if not p.get("targets"):
            problems.append(f"panel {title!r}: no targets")
    for r in REQUIRED_ROWS:
        if r not in rows:
            problems.append(f"row {r!r} missing")

    defined = set(variables) | {"__rate_interval", "__interval", "__range", "__interval_ms"}
    for p, t in iter_targets(d):
        expr = t["expr"]
        for var in VAR_RE.findall(expr):
            if var not in defined:
                problems.append(f"panel {p.get('title')!r} {t.get('refId')}: undefined variable ${var}")
        bad = unfiltered_selectors(expr)
        if bad:
            problems.append(f"panel {p.get('title')!r} {t.get('refId')}: no {INSTANCE_FILTER} on {sorted(set(bad))}")
        if not METRIC_RE.search(expr):
            problems.append(f"panel {p.get('title')!r} {t.get('refId')}: no mqtt_dynamo_* metric in {expr!r}")

    titles = [p.get("title") for p in iter_panels(d.get("panels")) if p.get("type") != "row"]
    for core in CORE_PANELS:
        n = titles.count(core)
        if n != 1:
            problems.append(f"core panel {core!r} appears {n} times, want exactly 1")
    return problems


# ----------------------------------------------------------------------------- exposition


def exposition_names(text):
    """Metric names present in a text exposition: # TYPE names, series names, histogram bases."""
    typed = {}
    series = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                typed[parts[2]] = parts[3]
            continue
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if m:
            series.add(m.group(0))
    names = set(typed) | series
    for s in series:
        b = base_name(s)
        if b != s and typed.get(b) in ("histogram", "summary"):
            names.add(b)
        elif b != s and any(x == b + "_bucket" for x in series):
            names.add(b)
    return names


def run_promtool(promtool, text):
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    out = (p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")).strip()
    return p.returncode, out


# ----------------------------------------------------------------------------- catalogue


def load_catalogue(path):
    """{name: {"kind": ..., "labels": [...]}} from the catalogue JSON:
    {"metrics": [{"name": ..., "kind": "counter"|"gauge"|"histogram", "labels": [...]}, ...]}."""
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for m in doc["metrics"]:
        out[m["name"]] = {"kind": m["kind"], "labels": list(m.get("labels") or [])}
    return out


def catalogue_checks(catalogue, referenced):
    """Problems between the catalogue and the metrics the dashboard's queries name."""
    problems = []
    for n in sorted(set(catalogue) - referenced):
        problems.append(f"catalogue metric {n} is not on the dashboard")
    for n in sorted(referenced - set(catalogue)):
        problems.append(f"the dashboard names {n}, which is not in the catalogue")
    return problems


LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
SERIES_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s")


def exposition_families(text):
    """{family: {"type": the # TYPE or None, "labels": set of frozensets of label names}}.

    A histogram's or summary's _bucket/_sum/_count series belong to its family; `le` and
    `quantile` are left out of the label names."""
    typed = {}
    series = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                typed[parts[2]] = parts[3]
            continue
        m = SERIES_RE.match(line + " ")
        if m:
            names = frozenset(LABEL_RE.findall(m.group(2) or "")) - {"le", "quantile"}
            series.append((m.group(1), names))
    families = {n: {"type": t, "labels": set()} for n, t in typed.items()}
    for name, labels in series:
        family = name
        base = base_name(name)
        if base != name and typed.get(base) in ("histogram", "summary"):
            family = base
        families.setdefault(family, {"type": typed.get(family), "labels": set()})
        families[family]["labels"].add(labels)
    return families


def exposition_checks(catalogue, text, allowed=frozenset()):
    """Problems between the catalogue and one scrape: every catalogue metric present (unless
    `allowed`) with the catalogue's type and label names; no uncatalogued mqtt_dynamo_* metric."""
    problems = []
    families = exposition_families(text)
    for name, m in sorted(catalogue.items()):
        f = families.get(name)
        if f is None:
            if name not in allowed:
                problems.append(f"catalogue metric {name} is not in the exposition")
            continue
        if f["type"] != m["kind"]:
            problems.append(f"{name} is exported as {f['type']}, the catalogue says {m['kind']}")
        want = frozenset(m["labels"])
        for labels in sorted(f["labels"], key=sorted):
            if labels != want:
                problems.append(f"{name} has a series labelled {sorted(labels)}, the catalogue says {sorted(want)}")
    for name in sorted(families):
        if name.startswith("mqtt_dynamo_") and name not in catalogue:
            problems.append(f"{name} is exported but not in the catalogue")
    return problems


# ----------------------------------------------------------------------------- prometheus


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode(errors="replace")


def prom_query(base, expr, timeout=10):
    """Instant query. Returns the decoded JSON body (errors included, never raises on HTTP 4xx/5xx)."""
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(f"{base}/api/v1/query", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
    try:
        return json.loads(body)
    except ValueError:
        return {"status": "error", "errorType": "bad_response", "error": body[:500]}


def scrape_config(metrics_url):
    u = urllib.parse.urlsplit(metrics_url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"--metrics-url {metrics_url!r} is not an http(s) URL")
    path = u.path or "/metrics"
    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: {json.dumps(JOB)}\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        f"    scheme: {u.scheme}\n"
        f"    metrics_path: {json.dumps(path)}\n"
        "    static_configs:\n"
        f"      - targets: [{json.dumps(u.netloc)}]\n"
    )


def wait_ready(base, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with status {proc.returncode} before it was ready")
        try:
            status, _ = http_get(f"{base}/-/ready", timeout=2)
            if status == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError("prometheus did not become ready in time")


def wait_up(base, proc, deadline):
    """Wait until up{job} has been 1 for at least UP_SCRAPES scrapes."""
    expr = f'sum_over_time(up{{job="{JOB}"}}[2m])'
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with status {proc.returncode}")
        r = prom_query(base, expr)
        if r.get("status") == "success" and r["data"]["result"]:
            last = float(r["data"]["result"][0]["value"][1])
            if last >= UP_SCRAPES:
                return last
        time.sleep(0.5)
    detail = ""
    try:
        _, body = http_get(f"{base}/api/v1/targets")
        for t in json.loads(body)["data"]["activeTargets"]:
            detail += f" target {t.get('scrapeUrl')}: health={t.get('health')} lastError={t.get('lastError')!r}"
    except Exception as e:  # noqa: BLE001 - diagnostics only
        detail = f" (targets unavailable: {e})"
    raise TimeoutError(f'up{{job="{JOB}"}} was 1 for {last or 0:g} scrapes, want {UP_SCRAPES};{detail}')


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dashboard", default="dashboards/mqtt-dynamo.json")
    ap.add_argument("--metrics-url", default="http://127.0.0.1:8095/metrics")
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--promtool", default=shutil.which("promtool") or "/usr/bin/promtool")
    ap.add_argument("--core-min-points", type=int, default=1,
                    help="samples each core panel must return, summed over its queries")
    ap.add_argument("--core-require-finite", action="store_true",
                    help="count only non-NaN samples towards --core-min-points")
    ap.add_argument("--allow-missing", default="",
                    help="comma-separated metric names allowed to be absent from the exposition "
                         "(by default every metric the dashboard names must be exported)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds for Prometheus to be ready and scrape")
    ap.add_argument("--catalogue", default="",
                    help="the service's metric catalogue as JSON (written by the Rust dashboard test): "
                         "every catalogue metric must be on the dashboard and in the exposition")
    ap.add_argument("--static-only", action="store_true",
                    help="only the dashboard JSON checks (no exporter, promtool or Prometheus)")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _on_signal)
    failures = []

    with open(args.dashboard) as f:
        dashboard = json.load(f)
    targets = list(iter_targets(dashboard))
    static = static_checks(dashboard)
    print(f"dashboard: {args.dashboard}: {sum(1 for p in iter_panels(dashboard.get('panels')) if p.get('type') != 'row')} panels, {len(targets)} queries")
    for p in static:
        print(f"  FAIL {p}")
    failures += [f"dashboard: {p}" for p in static]
    referenced = set()
    for _, t in targets:
        referenced |= metric_names(t["expr"])
    print(f"  references {len(referenced)} metrics")
    catalogue = load_catalogue(args.catalogue) if args.catalogue else None
    if catalogue is not None:
        problems = catalogue_checks(catalogue, referenced)
        print(f"catalogue: {args.catalogue}: {len(catalogue)} metrics, {len(problems)} problems on the dashboard")
        for p in problems:
            print(f"  FAIL {p}")
        failures += [f"catalogue: {p}" for p in problems]

    if args.static_only:
        print(f"\nSUMMARY: static checks {'passed' if not failures else 'FAILED'} ({len(failures)} problems)")
        return 0 if not failures else 1

    # --- exposition and promtool
    try:
        status, text = http_get(args.metrics_url, timeout=10)
    except (urllib.error.URLError, OSError) as e:
        print(f"FAIL cannot fetch {args.metrics_url}: {e}")
        return 1
    print(f"\nexposition: {args.metrics_url}: HTTP {status}, {len(text)} bytes")
    rc, out = run_promtool(args.promtool, text)
    print(f"promtool check metrics: exit {rc}" + (":\n" + "\n".join("  " + l for l in out.splitlines()) if out else ", no output"))
    if rc != 0 or out:
        failures.append(f"promtool check metrics: exit {rc}: {out}")
    present = exposition_names(text)
    allowed = {base_name(n.strip()) for n in args.allow_missing.split(",") if n.strip()}
    absent = sorted(n for n in referenced if n not in present)
    missing = [n for n in absent if n not in allowed]
    for n in absent:
        if n in allowed:
            print(f"  note: metric {n} is not in the exposition (allowed by --allow-missing)")
        else:
            print(f"  FAIL metric {n} is referenced by the dashboard but not in the exposition")
    if missing:
        failures.append(f"metrics missing from the exposition: {', '.join(missing)}")
    unused = sorted(n for n in present
                    if n.startswith("mqtt_dynamo_") and n not in referenced and base_name(n) not in referenced)
    if unused:
        print(f"  note: exported but not on the dashboard: {', '.join(unused)}")
    if catalogue is not None:
        problems = exposition_checks(catalogue, text, allowed)
        print(f"  against the catalogue: {len(problems)} problems")
        for p in problems:
            print(f"  FAIL {p}")
        failures += [f"exposition: {p}" for p in problems]

    # --- Prometheus
    tmp = tempfile.mkdtemp(prefix="mqtt-dynamo-prom-")
    proc = None
    log_path = os.path.join(tmp, "prometheus.log")
    evaluated = 0
    with_data = []
    empty = []
    errors = []
    core_points = {c: 0 for c in CORE_PANELS}
    core_nan = {c: 0 for c in CORE_PANELS}
    try:
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(scrape_config(args.metrics_url))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [args.prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        print(f"\nprometheus: pid {proc.pid} on {base}, tsdb {tmp}")
        deadline = time.monotonic() + args.timeout
        wait_ready(base, proc, deadline)
        print("  ready")
        n_up = wait_up(base, proc, deadline)
        print(f'  up{{job="{JOB}"}} == 1 for {n_up:g} scrapes')

        # The `instance` variable: label_values(mqtt_dynamo_build_info, instance) in Grafana.
        q = urllib.parse.urlencode({"match[]": "mqtt_dynamo_build_info"})
        _, body = http_get(f"{base}/api/v1/label/instance/values?{q}")
        instances = json.loads(body).get("data") or []
        print(f"  instance variable values: {instances}")
        if not instances:
            failures.append("instance variable: label_values(mqtt_dynamo_build_info, instance) is empty")

        print("\nqueries:")
        for p, t in targets:
            title = p.get("title", "?")
            expr = substitute(t["expr"])
            evaluated += 1
            r = prom_query(base, expr)
            label = f"{title} [{t.get('refId')}]"
            if r.get("status") != "success" or r.get("errorType"):
                msg = f"{r.get('errorType')}: {r.get('error')}"
                errors.append((label, expr, msg))
                print(f"  ERROR {label}: {msg}\n        {expr}")
                continue
            for w in r.get("warnings") or []:
                print(f"  warning {label}: {w}")
            result = r["data"]["result"]
            if r["data"].get("resultType") != "vector":
                result = [result] if result else []
            n = len(result)
            nan = sum(1 for s in result if isinstance(s, dict) and math.isnan(float(s["value"][1])))
            if title in core_points:
                core_points[title] += n - (nan if args.core_require_finite else 0)
                core_nan[title] += nan
            if n:
                with_data.append(label)
                extra = f" ({nan} NaN)" if nan else ""
                print(f"  ok    {label}: {n} series{extra}")
            else:
                empty.append(label)
                print(f"  empty {label}")
        for label, expr, msg in errors:
            failures.append(f"query error in {label}: {msg} -- {expr}")
        for c in CORE_PANELS:
            if core_points[c] < args.core_min_points:
                failures.append(f"core panel {c!r} returned {core_points[c]} samples, want >= {args.core_min_points}")
    except (Interrupted, KeyboardInterrupt) as e:
        failures.append(f"interrupted: {e}")
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
        failures.append(f"prometheus: {e}")
        print(f"FAIL {e}")
        t = tail(log_path)
        if t:
            print("prometheus log (tail):\n" + t)
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nSUMMARY")
    print(f"  queries evaluated: {evaluated}, returned data: {len(with_data)}, empty: {len(empty)}, errors: {len(errors)}")
    print(f"  metrics referenced: {len(referenced)}, missing from exposition: {len(missing)}"
          + (f" ({', '.join(missing)})" if missing else ""))
    for c in CORE_PANELS:
        print(f"  core {c!r}: {core_points[c]} samples" + (f" ({core_nan[c]} NaN)" if core_nan[c] else ""))
    if empty:
        print("  empty (normal for counters never incremented): " + "; ".join(empty))
    if failures:
        print(f"FAILED ({len(failures)}):")
        for f_ in failures:
            print(f"  - {f_}")
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
