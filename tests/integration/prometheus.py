"""A real Prometheus server for tests: the ``prometheus`` binary out of Debian's package
(unpacked into the cache by ``apt_tool``, nothing installed), on a free loopback port, with a
generated scrape config and a time-scaled copy of the alert rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from pipeline.harness import wait_until
from pipeline.stack.install import apt_tool
from pipeline.stack.ports import free_port, is_port_free

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "cdc-alerts.yml"


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free right now (the workers' metrics
    ports follow capture's)."""
    for _ in range(50):
        base = free_port()
        if base + count <= 65535 and all(is_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def scaled_rules(target: Path, window: str = "20s", hold: str = "3s") -> Path:
    """The shipped rules with every range window set to ``window`` and every ``for`` to
    ``hold``: the same expressions and thresholds, minutes become seconds."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smh]\]", f"[{window}]", str(rule["expr"]))
            if "for" in rule:
                rule["for"] = hold
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


class PrometheusServer:
    def __init__(self, folder: Path, jobs: dict[str, list[str]], rules: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        self.config = folder / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = folder / "prometheus.log"
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(apt_tool("prometheus", "prometheus")), f"--config.file={self.config}",
             f"--storage.tsdb.path={folder / 'data'}", "--storage.tsdb.retention.time=1h",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_until(self._ready, 60, 0.5):
            self.stop()
            raise RuntimeError(f"prometheus did not start: {self.tail()}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.tail()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _api(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        return list(self._api("query", query=expr)["result"])

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self._api("alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]

    def targets_up(self) -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1]) for r in self.query("up")}

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
