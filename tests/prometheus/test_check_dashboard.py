#!/usr/bin/env python3
"""Offline tests of check_dashboard.py's parts and of dashboards/mqtt-dynamo.json itself.

Standard library only; needs neither the service nor Prometheus (the promtool test is skipped when
promtool is not installed). Run from the repository root:

    python3 -m unittest discover -s tests/prometheus -v
"""

import copy
import json
import os
import re
import shutil
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import check_dashboard as cd  # noqa: E402

DASHBOARD = os.path.join(ROOT, "dashboards", "mqtt-dynamo.json")

# The service's metric catalogue: the names in the table of dashboards/README.md, which a Rust unit
# test keeps equal to src/telemetry/catalogue.rs (the dashboard test in tests/observability.rs also
# hands the catalogue itself to check_dashboard.py --catalogue).
def read_catalogue():
    """{name: {"kind", "labels"}}, as check_dashboard.load_catalogue returns it, from the table."""
    out = {}
    with open(os.path.join(ROOT, "dashboards", "README.md")) as f:
        for line in f:
            if not line.startswith("| `mqtt_dynamo_"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            name, kind, _unit, labels = cells[0].strip("`"), cells[1], cells[2], cells[3]
            out[name] = {"kind": kind, "labels": re.findall(r"`([a-z_]+)`", labels)}
    return out


CATALOGUE = read_catalogue()


def exposition_of(catalogue):
    """A scrape with one series of every catalogue metric, as the exporter renders it."""
    lines = []
    for name, m in sorted(catalogue.items()):
        labels = ",".join(f'{l}="x"' for l in m["labels"])
        lines.append(f"# HELP {name} Something.")
        lines.append(f"# TYPE {name} {m['kind']}")
        if m["kind"] == "histogram":
            le = ",".join(filter(None, [labels, 'le="+Inf"']))
            lines.append(f"{name}_bucket{{{le}}} 1")
            lines.append(f"{name}_sum{{{labels}}} 1" if labels else f"{name}_sum 1")
            lines.append(f"{name}_count{{{labels}}} 1" if labels else f"{name}_count 1")
        else:
            lines.append(f"{name}{{{labels}}} 0" if labels else f"{name} 0")
    return "\n".join(lines) + "\n"

EXPOSITION = """\
# HELP mqtt_dynamo_batch_requests Requests per flush.
# TYPE mqtt_dynamo_batch_requests histogram
mqtt_dynamo_batch_requests_bucket{le="1"} 1
mqtt_dynamo_batch_requests_bucket{le="+Inf"} 2
mqtt_dynamo_batch_requests_sum 26
mqtt_dynamo_batch_requests_count 2
# HELP mqtt_dynamo_items_written_total Items written.
# TYPE mqtt_dynamo_items_written_total counter
mqtt_dynamo_items_written_total{table="mqtt_msg"} 5
mqtt_dynamo_queue_events{stage="ingest"} 3
"""


def load():
    with open(DASHBOARD) as f:
        return json.load(f)


def panel(d, title):
    return next(p for p in cd.iter_panels(d["panels"]) if p.get("title") == title)


class Parts(unittest.TestCase):
    def test_metric_names_strip_histogram_suffixes(self):
        expr = ('histogram_quantile(0.99, sum by (le) (rate(mqtt_dynamo_batch_requests_bucket'
                '{instance=~"$instance"}[$__rate_interval]))) / mqtt_dynamo_batch_bytes_count'
                ' + mqtt_dynamo_ingest_to_durable_seconds_sum + mqtt_dynamo_items_written_total')
        self.assertEqual(cd.metric_names(expr), {
            "mqtt_dynamo_batch_requests", "mqtt_dynamo_batch_bytes",
            "mqtt_dynamo_ingest_to_durable_seconds", "mqtt_dynamo_items_written_total"})

    def test_substitute(self):
        expr = 'rate(x{instance=~"$instance",i2=~"${instance}"}[$__rate_interval]) [$__interval] ${__rate_interval}'
        self.assertEqual(cd.substitute(expr), 'rate(x{instance=~".*",i2=~".*"}[30s]) [15s] 30s')
        self.assertNotIn("$", cd.substitute("up{ds=\"$datasource\"}"))

    def test_unfiltered_selectors(self):
        ok = 'sum(rate(mqtt_dynamo_a_total{instance=~"$instance",x="y"}[1m]))'
        self.assertEqual(cd.unfiltered_selectors(ok), [])
        self.assertEqual(cd.unfiltered_selectors("sum(mqtt_dynamo_a)"), ["mqtt_dynamo_a"])
        self.assertEqual(cd.unfiltered_selectors('mqtt_dynamo_a{x="y"}'), ["mqtt_dynamo_a"])

    def test_exposition_names(self):
        names = cd.exposition_names(EXPOSITION)
        for n in ("mqtt_dynamo_batch_requests", "mqtt_dynamo_batch_requests_bucket",
                  "mqtt_dynamo_items_written_total", "mqtt_dynamo_queue_events"):
            self.assertIn(n, names)
        self.assertNotIn("mqtt_dynamo_retries_total", names)

    def test_scrape_config(self):
        cfg = cd.scrape_config("http://127.0.0.1:8095/metrics")
        self.assertIn('targets: ["127.0.0.1:8095"]', cfg)
        self.assertIn('metrics_path: "/metrics"', cfg)
        self.assertIn("scrape_interval: 1s", cfg)
        self.assertIn('job_name: "mqtt-dynamo"', cfg)
        with self.assertRaises(ValueError):
            cd.scrape_config("127.0.0.1:8095")

    def test_free_port(self):
        self.assertGreater(cd.free_port(), 0)

    @unittest.skipUnless(shutil.which("promtool"), "promtool not installed")
    def test_promtool_lint(self):
        self.assertEqual(cd.run_promtool(shutil.which("promtool"), EXPOSITION.split("mqtt_dynamo_queue")[0]), (0, ""))
        rc, out = cd.run_promtool(shutil.which("promtool"), "# TYPE foo counter\nfoo 1\n")
        self.assertNotEqual(rc, 0)
        self.assertIn("foo", out)


class Catalogue(unittest.TestCase):
    def test_load_catalogue(self):
        import tempfile
        doc = {"metrics": [{"name": "mqtt_dynamo_a_total", "kind": "counter", "labels": ["table"]},
                           {"name": "mqtt_dynamo_b", "kind": "gauge", "labels": []}]}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(doc, f)
        try:
            self.assertEqual(cd.load_catalogue(f.name), {
                "mqtt_dynamo_a_total": {"kind": "counter", "labels": ["table"]},
                "mqtt_dynamo_b": {"kind": "gauge", "labels": []}})
        finally:
            os.unlink(f.name)

    def test_catalogue_checks(self):
        cat = {"mqtt_dynamo_a_total": {"kind": "counter", "labels": []},
               "mqtt_dynamo_b": {"kind": "gauge", "labels": []}}
        self.assertEqual(cd.catalogue_checks(cat, {"mqtt_dynamo_a_total", "mqtt_dynamo_b"}), [])
        off = cd.catalogue_checks(cat, {"mqtt_dynamo_a_total", "mqtt_dynamo_c"})
        self.assertEqual(len(off), 2)
        self.assertIn("mqtt_dynamo_b is not on the dashboard", off[0])
        self.assertIn("mqtt_dynamo_c, which is not in the catalogue", off[1])

    def test_exposition_families(self):
        f = cd.exposition_families(EXPOSITION)
        self.assertEqual(f["mqtt_dynamo_batch_requests"], {"type": "histogram", "labels": {frozenset()}})
        self.assertEqual(f["mqtt_dynamo_items_written_total"]["labels"], {frozenset({"table"})})
        self.assertEqual(f["mqtt_dynamo_queue_events"], {"type": None, "labels": {frozenset({"stage"})}})
        self.assertNotIn("mqtt_dynamo_batch_requests_bucket", f)

    def test_exposition_of_the_catalogue_passes(self):
        self.assertEqual(cd.exposition_checks(CATALOGUE, exposition_of(CATALOGUE)), [])

    def test_exposition_checks_catch_mistakes(self):
        text = exposition_of(CATALOGUE)
        hist = "mqtt_dynamo_batch_bytes"
        cases = {
            "missing": (text.replace("mqtt_dynamo_spool_segments", "other_spool_segments"),
                        "mqtt_dynamo_spool_segments is not in the exposition"),
            "summary for a histogram": (text.replace(f"# TYPE {hist} histogram", f"# TYPE {hist} summary"),
                                        f"{hist} is exported as summary"),
            "extra label": (text.replace('mqtt_dynamo_spool_segments 0', 'mqtt_dynamo_spool_segments{x="y"} 0'),
                            "mqtt_dynamo_spool_segments has a series labelled ['x']"),
            "missing label": (text + 'mqtt_dynamo_items_written_total 3\n',
                              "mqtt_dynamo_items_written_total has a series labelled []"),
            "uncatalogued": (text + "mqtt_dynamo_new_thing 1\n",
                             "mqtt_dynamo_new_thing is exported but not in the catalogue"),
        }
        for name, (mutated, want) in cases.items():
            problems = cd.exposition_checks(CATALOGUE, mutated)
            self.assertTrue(any(want in p for p in problems), f"{name}: {problems}")
        self.assertEqual(cd.exposition_checks(
            CATALOGUE, cases["missing"][0].replace("other_spool_segments", "mqtt_dynamo_other"),
            allowed={"mqtt_dynamo_spool_segments"}),
            ["mqtt_dynamo_other is exported but not in the catalogue"])


class Dashboard(unittest.TestCase):
    def test_static_checks_pass(self):
        self.assertEqual(cd.static_checks(load()), [])

    def test_uses_exactly_the_catalogue(self):
        self.assertGreater(len(CATALOGUE), 30)
        names = set()
        for _, t in cd.iter_targets(load()):
            names |= cd.metric_names(t["expr"])
        self.assertEqual(cd.catalogue_checks(CATALOGUE, names), [])

    def test_core_panels_present(self):
        d = load()
        for title in cd.CORE_PANELS:
            self.assertTrue(panel(d, title)["targets"])

    def test_every_query_substitutes_to_plain_promql(self):
        for p, t in cd.iter_targets(load()):
            self.assertNotIn("$", cd.substitute(t["expr"]), p["title"])

    def test_counters_use_rate_interval_and_latency_uses_histogram_quantile(self):
        for p, t in cd.iter_targets(load()):
            expr = t["expr"]
            if "_total{" in expr:
                self.assertIn("[$__rate_interval]", expr, p["title"])
            if "_seconds" in expr:
                self.assertIn("histogram_quantile(", expr, p["title"])
                self.assertIn("_seconds_bucket{", expr, p["title"])

    def test_static_checks_catch_mistakes(self):
        base = load()
        cases = {
            "hard-coded datasource uid": lambda d: panel(d, "Ingest rate").update(
                datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
            "duplicate id": lambda d: panel(d, "Items written/s").update(id=panel(d, "Ingest rate")["id"]),
            "no unit": lambda d: panel(d, "Drop rate")["fieldConfig"]["defaults"].pop("unit"),
            "no description": lambda d: panel(d, "Drop rate").pop("description"),
            "outside grid": lambda d: panel(d, "Drop rate")["gridPos"].update(x=22),
            "undefined variable": lambda d: panel(d, "Drop rate")["targets"][0].update(
                expr='sum(mqtt_dynamo_queue_events{instance=~"$instance",pod="$pod"})'),
            "no instance filter": lambda d: panel(d, "Drop rate")["targets"][0].update(
                expr="sum(mqtt_dynamo_queue_events)"),
            "core panel renamed": lambda d: panel(d, "Ingest rate").update(title="Ingest"),
            "row missing": lambda d: panel(d, "DynamoDB").update(title="Dynamo"),
            "no instance variable": lambda d: d["templating"]["list"].pop(),
        }
        for name, mutate in cases.items():
            d = copy.deepcopy(base)
            mutate(d)
            self.assertTrue(cd.static_checks(d), f"{name}: not caught")


if __name__ == "__main__":
    unittest.main()
