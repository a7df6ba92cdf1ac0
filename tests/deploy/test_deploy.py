"""What must hold between the deployment files and the service they deploy.

The Dockerfile, the Kubernetes manifests, the EMQX example, the IAM policies and the systemd unit
each repeat facts the service owns: its ports, its configuration keys, its shutdown deadline,
the DynamoDB calls it makes and the tables it makes them on. These tests read those facts from
the source (src/config/default.toml, src/storage/item.rs, the DynamoDB calls under src/) and,
for the Kubernetes configuration, from the binary itself (`mqtt-dynamo config check`, given as
MQTT_DYNAMO_BIN; scripts/test sets it), and check every file against them.

Run: python3 -m unittest discover -s tests/deploy   (standard library and PyYAML)
"""

import json
import os
import re
import subprocess
import tempfile
import tomllib
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DEFAULTS = tomllib.loads((ROOT / "src/config/default.toml").read_text())


# ---------------------------------------------------------------------------------------------
# Reading the files

def parse_duration(text):
    """Seconds in a humantime duration as the service writes them: "25s", "3s 100ms", "2m"."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60,
             "h": 3600, "hr": 3600, "d": 86400}
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):  # systemd's bare number: seconds
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def port_of(listen):
    host, _, port = listen.rpartition(":")
    return host, int(port)


def k8s_docs(folder=K8S):
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append(doc)
    return docs


def the(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dockerfile():
    """The Dockerfile as stages: [{"from": image, "name": alias, "ins": [(INSTR, args)]}]."""
    text = (ROOT / "Dockerfile").read_text()
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    args, stages = {}, []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG" and not stages:
            name, _, value = rest.partition("=")
            args[name] = value
        elif instr == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            alias = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append({"from": image, "name": alias, "ins": []})
        else:
            stages[-1]["ins"].append((instr, rest))
    return stages


def docker_env(stage):
    """The ENV of a stage (KEY=VALUE pairs, as the image's processes see them)."""
    env = {}
    for instr, rest in stage["ins"]:
        if instr == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerignore_patterns():
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def glob_regex(pattern):
    """Docker's .dockerignore pattern (Go filepath.Match plus **) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def docker_ignored(path, patterns):
    """Whether .dockerignore keeps `path` (relative to the context) out: the last matching
    pattern wins, `!` re-includes, and a pattern matching a parent directory covers it."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def systemd_unit():
    entries = {}
    text = (DEPLOY / "systemd/mqtt-dynamo.service").read_text()
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault((section, key), []).append(value)
    return entries


def table_names():
    """The seven table names by variant (Table::Msg -> mqtt_msg), from src/storage/item.rs."""
    text = (ROOT / "src/storage/item.rs").read_text()
    names = dict(re.findall(r'Table::(\w+) => "(mqtt_\w+)"', text))
    assert len(names) == 7, names
    return names


def ttl_tables():
    """The tables `tables create` enables TTL on (TTL_TABLES in src/storage/tables.rs)."""
    text = (ROOT / "src/storage/tables.rs").read_text()
    m = re.search(r"const TTL_TABLES: \[Table; \d+\] = \[([^\]]*)\]", text)
    assert m, "TTL_TABLES not found in src/storage/tables.rs"
    names = table_names()
    return {names[v] for v in re.findall(r"Table::(\w+)", m.group(1))}


# The DynamoDB calls, found as the brief for these policies asks.
CALL = re.compile(r"\.(batch_write_item|batch_get_item|update_item|put_item|delete_item|get_item"
                  r"|query|scan|describe_table|create_table|list_tables|update_time_to_live"
                  r"|describe_time_to_live|batch_execute_statement|execute_statement)\(\)")

# Who makes each call: the functions of src/storage/tables.rs and the CLI commands that are not
# `serve`, by the file and function the call is in. Every other call under src/ (the pipeline,
# the lookups) is made by `serve`. A new call site in tables.rs or in the CLI must be classified
# here, or test_every_call_is_classified fails.
POLICY_OF_FUNCTION = {
    ("src/storage/tables.rs", "create_one"): "tables-admin",    # tables create
    ("src/storage/tables.rs", "wait_active"): "tables-admin",   # tables create
    ("src/storage/tables.rs", "describe_all"): "tables-admin",  # tables describe
    ("src/storage/tables.rs", "enable_ttl"): "tables-admin",    # tables create
    ("src/storage/tables.rs", "describe_ttl"): "tables-admin",  # tables describe
    ("src/storage/tables.rs", "check_exist"): "serve",          # serve's start and /readyz
    ("src/bin/mqtt-dynamo/subs.rs", "subs_command"): "subs-cli",  # subs add / rm
    # tables build-index reads mqtt_retain and mqtt_topic_msg_map and writes mqtt_topic_index as
    # the service does (Scan, BatchWriteItem): run it with the service's policy.
    ("src/storage/tables.rs", "index_segment"): "serve",
    ("src/storage/tables.rs", "put_index_entries"): "serve",
    # retained restore reads mqtt_retain as the lookups do: the service's policy covers it.
    ("src/bin/mqtt-dynamo/retained.rs", "read_retained"): "serve",
}
POLICY_FILES = {
    "serve": "iam-policy.json",
    "tables-admin": "iam-policy-tables-admin.json",
    "subs-cli": "iam-policy-subs-cli.json",
}


# API calls whose IAM actions are not named after them: BatchExecuteStatement is authorized per
# statement by its PartiQL action, and the pipeline sends UPDATE statements and, for writes whose
# UPDATE found no item, INSERT statements.
IAM_ACTIONS_OF_CALL = {
    "batch_execute_statement": ["dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate"],
}


def call_sites():
    """(file, enclosing function, IAM action) for every DynamoDB call under src/, test helpers
    (src/test_util, which the service binary does not contain) left out."""
    sites = []
    for path in sorted((ROOT / "src").rglob("*.rs")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("src/test_util/") or "/tests" in rel or rel.endswith("tests.rs"):
            continue
        function = None
        for line in path.read_text().splitlines():
            m = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?fn\s+(\w+)", line)
            if m:
                function = m.group(1)
            for call in CALL.findall(line):
                actions = IAM_ACTIONS_OF_CALL.get(
                    call, ["dynamodb:" + "".join(w.capitalize() for w in call.split("_"))])
                sites.extend((rel, function, action) for action in actions)
    return sites


def policy_of(rel, function):
    if (rel, function) in POLICY_OF_FUNCTION:
        return POLICY_OF_FUNCTION[(rel, function)]
    if rel == "src/storage/tables.rs" or rel.startswith("src/bin/"):
        return None  # unclassified: the test says so
    return "serve"


def load_policy(name):
    return json.loads((DEPLOY / POLICY_FILES[name]).read_text())


# ---------------------------------------------------------------------------------------------
# The Kubernetes configuration as the pod sees it

class Pod:
    """The StatefulSet's container with the volumes, Secrets and ConfigMap it mounts."""

    def __init__(self):
        self.docs = k8s_docs()
        self.examples = k8s_docs(K8S / "examples")
        self.sts = the(self.docs, "StatefulSet")
        self.spec = self.sts["spec"]["template"]["spec"]
        self.container = self.spec["containers"][0]
        self.env = {e["name"]: e["value"] for e in self.container.get("env", []) if "value" in e}
        self.ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        templates = self.sts["spec"].get("volumeClaimTemplates", [])
        self.claims = {c["metadata"]["name"] for c in templates}
        self.mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        self.config_path = self.env["MQTT_DYNAMO_CONFIG"]
        config_map = self.mounted_config_map()
        self.toml_text = config_map["data"][Path(self.config_path).name]
        self.toml = tomllib.loads(self.toml_text)

    def mounted_config_map(self):
        for name, path in self.mounts.items():
            volume = self.volumes.get(name, {})
            if "configMap" in volume and Path(self.config_path).parent == Path(path):
                return the(self.docs, "ConfigMap", volume["configMap"]["name"])
        raise AssertionError(f"MQTT_DYNAMO_CONFIG {self.config_path} is in no ConfigMap mount")

    def image_env(self):
        return docker_env(dockerfile()[-1])

    def process_env(self):
        """The container's environment: the image's ENV with the pod's env over it."""
        env = dict(self.image_env())
        env.update(self.env)
        return env

    def value(self, section, key):
        """A key's value from the environment, the ConfigMap's TOML or the defaults (the order
        the service applies them), without running the service."""
        var = "MQTT_DYNAMO_" + "_".join(section + [key]).upper()
        env = self.process_env()
        if var in env:
            return env[var]
        table, defaults = self.toml, DEFAULTS
        for s in section:
            table, defaults = table.get(s, {}), defaults.get(s, {})
        return table.get(key, defaults.get(key))

    def secret_file(self, path):
        """(Secret, key) a mounted file path reads, or None when no Secret mount holds it."""
        for name, mount in self.mounts.items():
            volume = self.volumes.get(name, {})
            if "secret" not in volume:
                continue
            mount = Path(mount)
            if Path(path).parent != mount:
                continue
            secret_name = volume["secret"]["secretName"]
            key = Path(path).name
            for item in volume["secret"].get("items", []):
                if item["path"] == key:
                    key = item["key"]
            secret = the(self.examples, "Secret", secret_name)
            keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
            return secret, key if key in keys else None
        return None

    def file_keys(self):
        """Every `K_file` in the ConfigMap's TOML and the environment: (where, path)."""
        found = []

        def walk(table, prefix):
            for key, value in table.items():
                if isinstance(value, dict):
                    walk(value, prefix + [key])
                elif key.endswith("_file"):
                    found.append((".".join(prefix + [key]), value))
        walk(self.toml, [])
        for var, value in self.process_env().items():
            if var.startswith("MQTT_DYNAMO_") and var.endswith("_FILE"):
                found.append((var, value))
        return found


# ---------------------------------------------------------------------------------------------

class KubernetesTest(unittest.TestCase):
    def setUp(self):
        self.pod = Pod()

    def service(self):
        return the(self.pod.docs, "Service", "mqtt-dynamo")

    def test_every_object_is_in_the_namespace(self):
        namespace = the(self.pod.docs, "Namespace")["metadata"]["name"]
        for doc in self.pod.docs + self.pod.examples:
            if doc["kind"] != "Namespace":
                self.assertEqual(doc["metadata"].get("namespace"), namespace,
                                 f'{doc["kind"]} {doc["metadata"]["name"]}')

    def test_listeners_on_all_interfaces_on_the_container_ports(self):
        for section, port_name in [("exhook", "exhook"), ("http", "http"), ("metrics", "metrics")]:
            host, port = port_of(self.pod.value([section], "listen"))
            self.assertEqual(host, "0.0.0.0", f"[{section}] listen")
            self.assertEqual(port, self.pod.ports[port_name],
                             f"[{section}] listen vs containerPort")

    def test_services_target_the_container_ports(self):
        labels = self.pod.sts["spec"]["template"]["metadata"]["labels"]
        for svc in [d for d in self.pod.docs if d["kind"] == "Service"]:
            for k, v in svc["spec"]["selector"].items():
                self.assertEqual(labels.get(k), v, f'{svc["metadata"]["name"]} selector')
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                number = self.pod.ports[target] if isinstance(target, str) else target
                self.assertIn(number, self.pod.ports.values(), f'{svc["metadata"]["name"]} {p}')
        exhook = [p for p in self.service()["spec"]["ports"] if p["name"] == "exhook"]
        self.assertEqual(len(exhook), 1)
        headless = the(self.pod.docs, "Service", self.pod.sts["spec"]["serviceName"])
        self.assertEqual(headless["spec"].get("clusterIP"), "None")

    def test_probes_on_the_metrics_port(self):
        metrics_port = port_of(self.pod.value(["metrics"], "listen"))[1]
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")]:
            get = self.pod.container[probe]["httpGet"]
            self.assertEqual(get["path"], path, probe)
            port = get["port"]
            self.assertEqual(self.pod.ports[port] if isinstance(port, str) else port,
                             metrics_port, probe)

    def test_spool_on_the_volume_claim(self):
        self.assertIn(str(self.pod.value(["pipeline", "spool"], "enabled")).lower(), ("true",))
        spool = Path(self.pod.value(["pipeline", "spool"], "dir"))
        self.assertTrue(spool.is_absolute(), spool)
        under = [name for name, path in self.pod.mounts.items()
                 if spool == Path(path) or Path(path) in spool.parents]
        self.assertTrue(under, f"spool dir {spool} is under no volume mount")
        self.assertIn(under[0], self.pod.claims, "the spool's mount is not a volumeClaimTemplate")

    def test_grace_period_above_shutdown_timeout(self):
        timeout = parse_duration(self.pod.value(["pipeline"], "shutdown_timeout"))
        grace = self.pod.spec["terminationGracePeriodSeconds"]
        self.assertGreater(grace, timeout)

    def test_secrets_come_from_mounted_secret_files(self):
        files = dict(self.pod.file_keys())
        self.assertIn("http.token_file", files, "the HTTP token is not read from a file")
        self.assertNotIn("token", self.pod.toml.get("http", {}), "a token in the ConfigMap")
        for where, path in files.items():
            found = self.pod.secret_file(path)
            self.assertIsNotNone(found, f"{where} = {path} is in no Secret mount")
            self.assertIsNotNone(found[1], f"{where} = {path}: the Secret has no such key")
        for section in ("exhook", "http"):
            for key in ("tls_cert", "tls_key", "tls_client_ca"):
                path = self.pod.toml.get(section, {}).get(key)
                if path:
                    found = self.pod.secret_file(path)
                    self.assertTrue(found and found[1], f"[{section}] {key} = {path}")

    def test_no_in_memory_dynamodb_and_a_region(self):
        self.assertEqual(str(self.pod.value(["dynamodb"], "embedded")).lower(), "false")
        self.assertIn("AWS_REGION", self.pod.env)

    def test_non_root_as_the_image(self):
        pod_ctx = self.pod.spec["securityContext"]
        self.assertTrue(pod_ctx["runAsNonRoot"])
        user = [rest for instr, rest in dockerfile()[-1]["ins"] if instr == "USER"][-1]
        self.assertEqual(str(pod_ctx["runAsUser"]), user.split(":")[0])
        ctx = self.pod.container["securityContext"]
        self.assertFalse(ctx["allowPrivilegeEscalation"])
        self.assertTrue(ctx["readOnlyRootFilesystem"])
        self.assertEqual(ctx["capabilities"]["drop"], ["ALL"])

    def test_resources_and_service_account(self):
        self.assertIn("requests", self.pod.container["resources"])
        self.assertIn("limits", self.pod.container["resources"])
        sa = the(self.pod.docs, "ServiceAccount", self.pod.spec["serviceAccountName"])
        arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        self.assertRegex(arn, r"^arn:aws:iam::[A-Z0-9_]+:role/[\w+=,.@-]+$")

    def test_emqx_example_points_at_the_service(self):
        text = (K8S / "examples/emqx-exhook.conf").read_text()
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))
        url = re.search(r'\burl\s*=\s*"([^"]+)"', text).group(1)
        m = re.fullmatch(r"(https?)://([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)",
                         url)
        self.assertIsNotNone(m, url)
        scheme, name, namespace, port = m.groups()
        svc = self.service()
        self.assertEqual(name, svc["metadata"]["name"])
        self.assertEqual(namespace, svc["metadata"]["namespace"])
        exhook = [p for p in svc["spec"]["ports"] if p["name"] == "exhook"][0]
        self.assertEqual(int(port), exhook["port"])
        tls = self.pod.value(["exhook"], "tls_cert")
        self.assertEqual(scheme, "https" if tls else "http")
        timeout = parse_duration(re.search(r'request_timeout\s*=\s*"([^"]+)"', text).group(1))
        self.assertGreater(timeout, parse_duration(self.pod.value(["exhook"], "block_timeout")),
                           "EMQX would give up before the service's own wait for queue room")
        self.assertRegex(text, r"failed_action\s*=\s*ignore")
        self.assertRegex(text, r"auto_reconnect\s*=")
        self.assertRegex(text, r"pool_size\s*=\s*\d+")
        self.assertRegex(text, r'name\s*=\s*"[^"]+"')

    def test_config_check_accepts_the_pod_configuration(self):
        binary = os.environ.get("MQTT_DYNAMO_BIN")
        if not binary:
            self.skipTest("MQTT_DYNAMO_BIN is not set (scripts/test sets it to "
                          "target/debug/mqtt-dynamo): the pod's configuration was not run "
                          "through `mqtt-dynamo config check`")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            text, env = self.pod.toml_text, dict(self.pod.process_env())
            # The Secrets' files where the pod mounts them, under tmp: the example's values.
            for where, path in self.pod.file_keys():
                found = self.pod.secret_file(path)
                self.assertTrue(found and found[1], f"{where} = {path} is in no mounted Secret")
                secret, key = found
                value = {**secret.get("stringData", {})}.get(key, "placeholder")
                local = tmp / path.lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(value + "\n")
                text = text.replace(json.dumps(path), json.dumps(str(local)))
                env = {k: (str(local) if v == path and k.endswith("_FILE") else v)
                       for k, v in env.items()}
            config = tmp / "mqtt-dynamo.toml"
            config.write_text(text)
            env.pop("MQTT_DYNAMO_CONFIG", None)
            # What EKS injects for the service account's IRSA role: an AWS runtime, where the
            # service refuses the in-memory default unless the configuration chooses.
            env["AWS_ROLE_ARN"] = the(self.pod.docs, "ServiceAccount")["metadata"][
                "annotations"]["eks.amazonaws.com/role-arn"]
            env["AWS_WEB_IDENTITY_TOKEN_FILE"] = \
                "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
            env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
            run = subprocess.run([binary, "config", "check", str(config)], env=env,
                                 capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        effective = tomllib.loads(run.stdout)
        for section, port_name in [("exhook", "exhook"), ("http", "http"), ("metrics", "metrics")]:
            host, port = port_of(effective[section]["listen"])
            self.assertEqual(host, "0.0.0.0", section)
            self.assertEqual(port, self.pod.ports[port_name], section)
            self.assertTrue(effective[section]["enabled"], section)
        spool = effective["pipeline"]["spool"]
        self.assertTrue(spool["enabled"])
        self.assertTrue(any(Path(self.pod.mounts[c]) in Path(spool["dir"]).parents
                            or Path(self.pod.mounts[c]) == Path(spool["dir"])
                            for c in self.pod.claims if c in self.pod.mounts), spool["dir"])
        self.assertGreater(self.pod.spec["terminationGracePeriodSeconds"],
                           parse_duration(effective["pipeline"]["shutdown_timeout"]))
        self.assertEqual(effective["http"].get("token"), "<redacted>")
        self.assertIs(effective["dynamodb"].get("embedded"), False)
        self.assertEqual(effective["log"]["format"], "json")
        self.assertIn("# DynamoDB: AWS", run.stdout)


class DockerfileTest(unittest.TestCase):
    def setUp(self):
        self.stages = dockerfile()
        self.final = self.stages[-1]
        self.env = docker_env(self.final)

    def ins(self, stage, name):
        return [rest for instr, rest in stage["ins"] if instr == name]

    def test_multi_stage_release_build(self):
        self.assertGreaterEqual(len(self.stages), 2)
        builder = self.stages[0]
        rust_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"][
            "rust-version"]
        self.assertRegex(builder["from"], rf"^rust:{re.escape(rust_version)}\b")
        runs = " ".join(self.ins(builder, "RUN"))
        for word in ("cargo build", "--release", "--locked", "--bin mqtt-dynamo"):
            self.assertIn(word, runs)
        self.assertIn("distroless/cc", self.final["from"], "the runtime image needs glibc")
        copied = " ".join(self.ins(self.final, "COPY"))
        self.assertIn(f"--from={builder['name']}", copied)

    def test_non_root_user(self):
        users = self.ins(self.final, "USER")
        self.assertTrue(users, "no USER in the final stage")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("root", "0"))

    def test_listeners_and_exposed_ports_are_the_defaults(self):
        defaults = {port_of(DEFAULTS[s]["listen"])[1] for s in ("exhook", "http", "metrics")}
        exposed = {int(p.split("/")[0]) for line in self.ins(self.final, "EXPOSE")
                   for p in line.split()}
        self.assertEqual(exposed, defaults)
        for section in ("exhook", "http", "metrics"):
            host, port = port_of(self.env[f"MQTT_DYNAMO_{section.upper()}_LISTEN"])
            self.assertEqual(host, "0.0.0.0")
            self.assertEqual(port, port_of(DEFAULTS[section]["listen"])[1])

    def test_healthcheck_on_the_metrics_port(self):
        checks = self.ins(self.final, "HEALTHCHECK")
        self.assertEqual(len(checks), 1)
        cmd = json.loads(checks[0].split("CMD", 1)[1])
        self.assertTrue(cmd[0].endswith("mqtt-dynamo") and cmd[1] == "health", cmd)
        metrics_port = port_of(self.env["MQTT_DYNAMO_METRICS_LISTEN"])[1]
        url = cmd[2] if len(cmd) > 2 else f"http://127.0.0.1:{metrics_port}/healthz"
        self.assertEqual(url, f"http://127.0.0.1:{metrics_port}/healthz")

    def test_spool_is_a_volume(self):
        volumes = [v for line in self.ins(self.final, "VOLUME") for v in json.loads(line)]
        self.assertIn(self.env["MQTT_DYNAMO_PIPELINE_SPOOL_DIR"], volumes)
        self.assertEqual(self.env.get("MQTT_DYNAMO_PIPELINE_SPOOL_ENABLED"), "true")

    def test_copy_sources_exist_and_are_sent(self):
        patterns = dockerignore_patterns()
        sources = []
        for stage in self.stages:
            for line in self.ins(stage, "COPY"):
                words = line.split()
                if any(w.startswith("--from") for w in words):
                    continue
                words = [w for w in words if not w.startswith("--")]
                sources += words[:-1]
        self.assertTrue(sources)
        for src in sources:
            self.assertTrue((ROOT / src).exists(), f"COPY {src}: not in the repository")
            self.assertFalse(docker_ignored(src, patterns),
                             f"COPY {src}: excluded by .dockerignore")
            if (ROOT / src).is_dir():
                kept = [p for p in (ROOT / src).rglob("*") if p.is_file()
                        and not docker_ignored(p.relative_to(ROOT).as_posix(), patterns)]
                self.assertTrue(kept, f"COPY {src}: every file in it is excluded")
        for member in tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]:
            if member != ".":
                self.assertIn(member, [s.rstrip("/") for s in sources],
                              f"workspace member {member} not copied: cargo cannot resolve")
        for bench in tomllib.loads((ROOT / "Cargo.toml").read_text()).get("bench", []):
            self.assertFalse(docker_ignored(f"benches/{bench['name']}.rs", patterns))

    def test_dockerignore_keeps_build_output_out(self):
        patterns = dockerignore_patterns()
        for path in ("target/debug/mqtt-dynamo", ".git/HEAD", "tools/dynalite/node_modules/x.js",
                     "loadgen/target/x"):
            self.assertTrue(docker_ignored(path, patterns), path)
        for path in ("Cargo.toml", "Cargo.lock", "src/lib.rs", "build.rs"):
            self.assertFalse(docker_ignored(path, patterns), path)


class IamPolicyTest(unittest.TestCase):
    def test_every_call_is_classified(self):
        sites = call_sites()
        self.assertTrue(sites, "the grep found no DynamoDB call")
        unclassified = [s for s in sites if policy_of(s[0], s[1]) is None]
        self.assertEqual(unclassified, [], "add these call sites to POLICY_OF_FUNCTION")

    def test_each_policy_grants_exactly_what_its_commands_call(self):
        needed = {name: set() for name in POLICY_FILES}
        for rel, function, action in call_sites():
            needed[policy_of(rel, function)].add(action)
        self.assertIn("dynamodb:BatchWriteItem", needed["serve"])
        self.assertIn("dynamodb:CreateTable", needed["tables-admin"])
        for name in POLICY_FILES:
            granted = set()
            for statement in load_policy(name)["Statement"]:
                self.assertEqual(statement["Effect"], "Allow")
                actions = statement["Action"]
                granted |= set([actions] if isinstance(actions, str) else actions)
            self.assertFalse([a for a in granted if "*" in a], f"{name}: wildcard action")
            self.assertEqual(granted - needed[name], set(), f"{name}: granted but never called")
            self.assertEqual(needed[name] - granted, set(), f"{name}: called but not granted")

    def test_resources_name_the_tables(self):
        tables = set(table_names().values())
        expected = {
            "serve": tables,
            "tables-admin": tables,
            "subs-cli": {"mqtt_sub"},
        }
        # Actions that touch fewer than the seven tables, and the tables they touch.
        narrower = {"dynamodb:UpdateTimeToLive": ttl_tables(),
                    "dynamodb:DescribeTimeToLive": ttl_tables(),
                    "dynamodb:PutItem": {"mqtt_sub"}, "dynamodb:DeleteItem": {"mqtt_sub"}}
        arn = re.compile(r"^arn:aws:dynamodb:REGION:ACCOUNT_ID:table/TABLE_PREFIX(mqtt_\w+)$")
        for name, want in expected.items():
            policy = load_policy(name)
            self.assertEqual(policy["Version"], "2012-10-17")
            named = set()
            for statement in policy["Statement"]:
                resources = set()
                for resource in statement["Resource"]:
                    m = arn.match(resource)
                    self.assertIsNotNone(m, f"{name}: {resource}")
                    resources.add(m.group(1))
                for action in statement["Action"]:
                    self.assertEqual(resources, narrower.get(action, tables),
                                     f"{name}: {action} on {sorted(resources)}")
                named |= resources
            self.assertEqual(named, want, name)


class SystemdTest(unittest.TestCase):
    def setUp(self):
        self.unit = systemd_unit()

    def one(self, key, section="Service"):
        values = self.unit.get((section, key), [])
        self.assertEqual(len(values), 1, key)
        return values[0]

    def environment(self):
        env = {}
        for line in self.unit.get(("Service", "Environment"), []):
            key, _, value = line.partition("=")
            env[key] = value
        return env

    def test_stop_timeout_above_shutdown_timeout(self):
        timeout = self.environment().get("MQTT_DYNAMO_PIPELINE_SHUTDOWN_TIMEOUT",
                                         DEFAULTS["pipeline"]["shutdown_timeout"])
        self.assertGreater(parse_duration(self.one("TimeoutStopSec")), parse_duration(timeout))
        self.assertEqual(self.one("KillSignal"), "SIGTERM")

    def test_reload_sends_sighup(self):
        self.assertEqual(self.one("ExecReload"), "/bin/kill -HUP $MAINPID")

    def test_spool_in_the_state_directory(self):
        env = self.environment()
        self.assertEqual(env.get("MQTT_DYNAMO_PIPELINE_SPOOL_ENABLED"), "true")
        spool = env["MQTT_DYNAMO_PIPELINE_SPOOL_DIR"]
        states = ["/var/lib/" + d for d in self.one("StateDirectory").split()]
        self.assertIn(spool, states)

    def test_own_user_and_environment_file(self):
        self.assertTrue(self.unit.get(("Service", "User")) or
                        self.unit.get(("Service", "DynamicUser")) == ["yes"])
        self.assertTrue(self.one("EnvironmentFile").lstrip("-").startswith("/etc/"))
        self.assertTrue(self.one("ExecStart").endswith(" serve"))
        self.assertEqual(self.one("NoNewPrivileges"), "yes")
        self.assertEqual(self.one("ProtectSystem"), "strict")


class HelpersTest(unittest.TestCase):
    def test_durations(self):
        self.assertEqual(parse_duration("25s"), 25)
        self.assertAlmostEqual(parse_duration("3s 100ms"), 3.1)
        self.assertEqual(parse_duration("2m"), 120)
        self.assertEqual(parse_duration("40"), 40)
        with self.assertRaises(ValueError):
            parse_duration("soon")

    def test_dockerignore_matching(self):
        self.assertTrue(docker_ignored("target/x", ["target"]))
        self.assertTrue(docker_ignored("a/node_modules/b", ["**/node_modules"]))
        self.assertFalse(docker_ignored("src/a.md", ["*.md"]))
        self.assertTrue(docker_ignored("README.md", ["*.md"]))
        self.assertFalse(docker_ignored("README.md", ["*.md", "!README.md"]))

    def test_call_sites_find_the_known_calls(self):
        actions = {a for _, _, a in call_sites()}
        self.assertTrue({"dynamodb:BatchWriteItem", "dynamodb:DescribeTable",
                         "dynamodb:CreateTable"} <= actions, actions)


if __name__ == "__main__":
    unittest.main()
