"""Starting and stopping the services as local processes (``nearcaipi up``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from nearcaipi.config import PROJECT_ROOT

logger = logging.getLogger(__name__)


def service_commands(api_host: str, api_port: int, console_port: int) -> dict[str, list[str]]:
    """Command lines of the four services, run from the project root with this interpreter."""
    python = sys.executable
    celery_flags = ["--pool", "solo", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    return {
        "api": [
            python, "-m", "uvicorn", "services.inference.app:create_app", "--factory",
            "--host", api_host, "--port", str(api_port), "--no-access-log",
        ],
        "explainer": [
            python, "-m", "celery", "-A", "services.explainer.worker", "worker",
            "-Q", "explain", "-n", "explainer@%h", *celery_flags,
        ],
        "trainer": [
            python, "-m", "celery", "-A", "services.trainer.worker", "worker",
            "-Q", "train", "-n", "trainer@%h", *celery_flags,
        ],
        "console": [
            python, "-m", "streamlit", "run", "services/ui/app.py",
            "--server.address", api_host, "--server.port", str(console_port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false",
        ],
    }  # fmt: skip


@dataclass
class Stack:
    """Child processes of the services; each in its own session so that Ctrl-C reaches only the supervisor."""

    environment: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> None:
        env = {**os.environ, **self.environment, "PYTHONPATH": _python_path()}
        self.processes[name] = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, start_new_session=True)
        logger.info("Started %s (pid %d)", name, self.processes[name].pid)

    def exited(self) -> dict[str, int]:
        return {name: process.returncode for name, process in self.processes.items() if process.poll() is not None}

    def stop(self, grace_seconds: float = 60.0) -> None:
        """Ask every service to stop (SIGTERM: workers finish their current task), then kill stragglers.

        A worker killed mid-task loses nothing: its explanation stays "running" in the records and the API
        queues it again when it next starts.
        """
        for name, process in self.processes.items():
            if process.poll() is None:
                logger.info("Stopping %s (pid %d)", name, process.pid)
                process.send_signal(signal.SIGTERM)

        deadline = time.monotonic() + grace_seconds
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", name, grace_seconds)
                process.kill()
                process.wait()


def _python_path() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{PROJECT_ROOT}{os.pathsep}{existing}" if existing else str(PROJECT_ROOT)


def wait_until_healthy(url: str, timeout: float, stack: Stack | None = None) -> None:
    """Poll ``url`` until it returns 200; raises TimeoutError, or RuntimeError if a service exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack is not None and stack.exited():
            raise RuntimeError(f"services exited while starting: {stack.exited()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not respond with 200 within {timeout:.0f} s")
