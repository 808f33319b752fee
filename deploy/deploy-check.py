"""Checks what deploy/deploy-check.sh rendered against the real `anchorage` binary.

Usage: deploy-check.py ANCHORAGE_BINARY WORK_DIR

WORK_DIR holds compose.yaml (`docker-compose config` output), chart.yaml, chart-hpa.yaml and
chart-existing.yaml (`helm template` output) and systemd/*.service.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

BIN, WORK = sys.argv[1], pathlib.Path(sys.argv[2])
ROOT = pathlib.Path(__file__).resolve().parent.parent
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def config_accepts(what, env, toml=None):
    """Whether `anchorage config show` loads this environment (and file) without error: every
    ANCHORAGE_<SECTION>__<KEY> must be a real key with a value of the right type."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANCHORAGE_")}
    clean.update({k: str(v) for k, v in env.items() if k.startswith("ANCHORAGE_")})
    args = [BIN, "config", "show"]
    with tempfile.TemporaryDirectory() as tmp:
        if toml is not None:
            path = pathlib.Path(tmp, "anchorage.toml")
            path.write_text(toml)
            args += ["--config", str(path)]
        run = subprocess.run(args, env=clean, capture_output=True, text=True, cwd=tmp)
    check(run.returncode == 0, f"{what}: the configuration is refused: {run.stderr.strip()}")
    return run.stdout


# Compose: the services, their roles and their configuration.
compose = yaml.safe_load((WORK / "compose.yaml").read_text())
services = compose["services"]
check(
    {"nats1", "nats2", "nats3", "postgres", "setup", "edge1", "edge2", "projector1", "projector2"}
    <= set(services),
    f"compose services: {sorted(services)}",
)
for name in ("nats1", "nats2", "nats3"):
    env = services[name]["environment"]
    for user in ("EDGE", "PROJECTOR", "OPERATOR"):
        check(env.get(f"ANCHORAGE_NATS_{user}_PASSWORD"), f"{name}: no password for {user}")
    mounts = " ".join(services[name]["volumes"] if isinstance(services[name]["volumes"][0], str)
                      else [v.get("target", "") for v in services[name]["volumes"]])
    check("auth.conf" in mounts, f"{name}: auth.conf is not mounted: {mounts}")
nats_conf = (ROOT / "deploy/compose/nats.conf").read_text()
check("include ./auth.conf" in nats_conf, "compose nats.conf does not include auth.conf")
check(re.search(r"sync_interval:\s*always", nats_conf), "compose nats.conf: sync_interval")
for name, role, user in [
    ("setup", None, "operator"),
    ("edge1", "edge", "edge"),
    ("edge2", "edge", "edge"),
    ("projector1", "projector", "projector"),
    ("projector2", "projector", "projector"),
]:
    svc = services[name]
    env = svc["environment"]
    check(env.get("ANCHORAGE_NATS__USER") == user, f"{name}: signs in as {env.get('ANCHORAGE_NATS__USER')}")
    check(env.get("ANCHORAGE_STREAMS__REPLICAS") == "3", f"{name}: stream replicas")
    check(env.get("ANCHORAGE_NATS__URL", "").count("nats://") == 3, f"{name}: all three NATS nodes")
    check("postgres://" in env.get("ANCHORAGE_DATABASE__URL", ""), f"{name}: PostgreSQL")
    config_accepts(f"compose {name}", env)
    if role:
        check(svc.get("command") == [role], f"{name}: runs {svc.get('command')}")
        check(svc["depends_on"]["setup"]["condition"] == "service_completed_successfully",
              f"{name}: does not wait for setup")
    if role == "projector":
        check("/readyz" in " ".join(svc["healthcheck"]["test"]), f"{name}: health check")
    if role == "edge":
        check("ANCHORAGE_AUTH__HMAC_SECRET" in env, f"{name}: no token secret")

# Dockerfile: multi-stage, unprivileged, a health check with a command the binary has.
dockerfile = (ROOT / "deploy/Dockerfile").read_text()
check(len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2, "Dockerfile: not multi-stage")
user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
check(user and not user[-1].startswith(("0", "root")), f"Dockerfile: runs as {user}")
health = re.search(r'HEALTHCHECK.*\n\s*CMD \["anchorage", "health", "([^"]+)"\]', dockerfile)
check(health and health.group(1).endswith("/readyz"), "Dockerfile: health check on /readyz")
docker_env = dict(re.findall(r"(ANCHORAGE_\w+)=(\S+)", dockerfile))
check(docker_env, "Dockerfile: no environment")
check(re.search(r"^\s*MIMALLOC_ALLOW_THP=0\b", dockerfile, re.M), "Dockerfile: huge pages allowed")
config_accepts("Dockerfile", docker_env)
# `anchorage health` answers 1 for what is not ready (nothing listens on port 9).
run = subprocess.run([BIN, "health", "http://127.0.0.1:9/readyz"], capture_output=True)
check(run.returncode == 1, f"anchorage health: exit {run.returncode} for a dead endpoint")
for src in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
    check((ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository")


# Helm: objects, probes, secrets, security, and the configuration the binary accepts.
def objects(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


chart = objects(WORK / "chart.yaml")
kinds = sorted(d["kind"] for d in chart)
check(
    {"ConfigMap", "Secret", "Deployment", "Service", "Job", "PodDisruptionBudget"} <= set(kinds),
    f"chart objects: {kinds}",
)
check(not by_kind(chart, "HorizontalPodAutoscaler"), "an autoscaler without autoscaling.enabled")
config_map = by_kind(chart, "ConfigMap")[0]
toml = config_map["data"]["anchorage.toml"]
deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
               for d in by_kind(chart, "Deployment")}
check(set(deployments) == {"edge", "projector"}, f"deployments: {sorted(deployments)}")
ports = {"edge": "http", "projector": "metrics"}
for role, d in deployments.items():
    c = container(d)
    check(c["args"][-1] == role, f"{role}: runs {c['args']}")
    check(c["livenessProbe"]["httpGet"]["path"] == "/livez", f"{role}: liveness probe")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{role}: readiness probe")
    check(c["readinessProbe"]["httpGet"]["port"] == ports[role], f"{role}: probe port")
    pod = d["spec"]["template"]["spec"]
    check(pod["securityContext"].get("runAsNonRoot") is True, f"{role}: may run as root")
    check(c["securityContext"].get("allowPrivilegeEscalation") is False, f"{role}: escalation")
    check(c["securityContext"].get("readOnlyRootFilesystem") is True, f"{role}: writable root")
    env = {}
    for e in c["env"]:
        if "valueFrom" in e:
            check("secretKeyRef" in e["valueFrom"], f"{role}: {e['name']} not from a Secret")
            env[e["name"]] = "from-a-secret"
        else:
            check(not re.search(r"PASSWORD|SECRET", e["name"]) and "postgres://" not in e["value"],
                  f"{role}: {e['name']} holds a secret in plain text")
            env[e["name"]] = e["value"]
    check(env.get("ANCHORAGE_NATS__USER") == role, f"{role}: NATS user")
    check(env.get("MIMALLOC_ALLOW_THP") == "0", f"{role}: huge pages allowed")
    check("ANCHORAGE_DATABASE__URL" in env and "ANCHORAGE_NATS__PASSWORD" in env,
          f"{role}: database or NATS password missing")
    env["ANCHORAGE_DATABASE__URL"] = "postgres://anchorage@postgres/anchorage"
    env["ANCHORAGE_NATS__PASSWORD"] = "x"
    env.pop("ANCHORAGE_AUTH__HMAC_SECRET", None)
    shown = config_accepts(f"chart {role}", env, toml)
    check("max_pending_per_ip = 0" in shown, f"chart {role}: the ConfigMap was not read")
check(deployments["projector"]["spec"]["replicas"] >= 2, "a single projector: no failover")
check(deployments["edge"]["spec"]["replicas"] >= 2, "a single edge")
job = by_kind(chart, "Job")[0]
check("pre-install" in job["metadata"]["annotations"]["helm.sh/hook"], "setup job: not a hook")
check("streams apply" in container(job)["args"][0] and "migrate" in container(job)["args"][0],
      "setup job: does not apply streams and migrate")
check({e["name"]: e.get("value") for e in container(job)["env"]}.get("ANCHORAGE_NATS__USER")
      == "operator", "setup job: not the operator")

hpa_chart = objects(WORK / "chart-hpa.yaml")
hpas = by_kind(hpa_chart, "HorizontalPodAutoscaler")
check(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["name"].endswith("-edge"),
      "autoscaling.enabled: no autoscaler for the edges")
edge_hpa = [d for d in by_kind(hpa_chart, "Deployment") if d["metadata"]["name"].endswith("-edge")]
check("replicas" not in edge_hpa[0]["spec"], "autoscaled edges still set replicas")
existing = objects(WORK / "chart-existing.yaml")
check(not by_kind(existing, "Secret"), "an existing Secret is made again")
refs = {e["valueFrom"]["secretKeyRef"]["name"]
        for d in by_kind(existing, "Deployment") for e in container(d)["env"] if "valueFrom" in e}
check(refs == {"mine"}, f"the existing Secret is not used: {refs}")

# systemd: each role's unit runs its command as its NATS user, unprivileged.
units = {p.name: p.read_text() for p in (WORK / "systemd").glob("*.service")}
for unit, role, user in [
    ("anchorage-edge.service", "edge", "edge"),
    ("anchorage-projector.service", "projector", "projector"),
    ("anchorage-setup.service", "migrate", "operator"),
]:
    text = units[unit]
    check(re.search(rf"^ExecStart=.* {role}$", text, re.M), f"{unit}: does not run {role}")
    check(f"Environment=ANCHORAGE_NATS__USER={user}" in text, f"{unit}: NATS user")
    check(re.search(r"^User=(?!root)\w+", text, re.M), f"{unit}: runs as root")
    check("NoNewPrivileges=yes" in text, f"{unit}: NoNewPrivileges")
    if role != "migrate":
        check("Environment=MIMALLOC_ALLOW_THP=0" in text, f"{unit}: huge pages allowed")
    env = dict(re.findall(r"^Environment=(ANCHORAGE_\w+)=(\S+)$", text, re.M))
    config_accepts(f"systemd {unit}", env)

if failures:
    print("deploy check failed:", *failures, sep="\n  ")
    sys.exit(1)
print("deploy check: compose, chart, Dockerfile and systemd units agree with the binary")
