"""Multi-rank serving through zerolib's launcher: rank 0 serves HTTP and routes, every rank scores.

The job (scripts/serve_tiny_moe.py) runs the real serve() loop on 2 gloo ranks with
MoEPrefillEngine (AsyncEP) over a tiny seeded MoE GPT; test_server_load.py runs the
`zerolib serve-prefill` command itself against a transformers model directory.
"""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install zerolib[dev])")
pytest.importorskip("fastapi", reason="fastapi is not installed (pip install zerolib[serve])")

from harness import free_port  # noqa: E402
from support.moe_models import reference_answers  # noqa: E402
from support.serving import prefix_workload, tiny_moe  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tests", "inference", "scripts", "serve_tiny_moe.py")


class Job:
    """A launcher process and its output lines, read in a thread so nothing blocks."""

    def __init__(self, argv: list[str]):
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "zerolib.cli", *argv], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line.rstrip()) for line in self.proc.stdout],
                         daemon=True).start()

    def wait_for(self, text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r}; output so far:\n" + "\n".join(self.seen))

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the job did not end:\n" + "\n".join(self.seen)) from None
        time.sleep(0.2)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "\n".join(self.seen)


def start_job() -> tuple[Job, str, dict[int, int]]:
    job = Job(["--num_procs", "2", "--master_port", str(free_port()), "--term_grace", "3", SCRIPT, "0"])
    url = job.wait_for("serving on").split("serving on ")[1].split()[0]
    pids = {}
    for line in job.seen:
        if " pid " in line:
            words = line.split()
            pids[int(words[-3])] = int(words[-1])
    return job, url, pids


def test_two_ranks_serve_concurrent_clients_and_stop_cleanly_on_sigterm():
    job, url, _ = start_job()
    try:
        model = tiny_moe()
        calls = [prefix_workload(2 + i % 3, seed=300 + i) for i in range(12)]
        answers = [None] * len(calls)

        def client(i):
            with httpx.Client(base_url=url, timeout=60) as http:
                answers[i] = http.post("/v1/score", json={"requests": calls[i]}).json()["results"]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        ranks_used = set()
        for got, requests in zip(answers, calls):
            assert got is not None, "a client got no answer"
            for mine, ref in zip(got, reference_answers(model, requests), strict=True):
                assert mine["best"] == ref["best"]
                assert mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5)
                ranks_used.add(mine["rank"])
        assert ranks_used == {0, 1}, "both ranks should have computed requests"
        metrics = httpx.get(url + "/metrics", timeout=60).json()
        assert metrics["ranks"] == 2 and metrics["tokens_from_cache"] > 0
    finally:
        job.proc.send_signal(signal.SIGTERM)
        code, output = job.finish()
    assert "[rank0] stopped cleanly" in output, output
    assert "failed" not in output, output
    assert code == 128 + signal.SIGTERM, output


def test_a_crashed_rank_ends_the_whole_job_and_no_client_hangs():
    job, url, pids = start_job()
    try:
        reply = httpx.post(url + "/v1/score", json={"requests": prefix_workload(1, seed=1)}, timeout=60)
        assert reply.status_code == 200
        os.kill(pids[1], signal.SIGKILL)
        code, output = job.finish(timeout=60)
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
    assert code == 128 + signal.SIGKILL, output
    assert "rank 1" in output and "failed" in output, output
    with pytest.raises(httpx.TransportError):
        httpx.post(url + "/v1/score", json={"requests": prefix_workload(1, seed=2)}, timeout=10)
