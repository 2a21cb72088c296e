#!/usr/bin/env python3
"""Issue #2 acceptance: an outside producer, written with pika, against the
real `send-worker` binary.

It starts `send-worker simulate` (the Telnyx-compatible API) and
`send-worker run` as child processes on a uniquely named topology, publishes
2,000 jobs the way any producer would (message_id, delivery_mode 2,
content_type application/json, publisher confirms, mandatory), and waits,
bounded, until every job is accounted for:

* valid jobs, and jobs that fail transiently and then succeed
  (+19990000503), are accepted by the API exactly once;
* jobs that fail permanently (+19990000403, +19990000422), transiently
  forever (+19990000500), or are malformed (not JSON) or invalid (bad E.164)
  are in the dead-letter queue exactly once, with the expected
  x-error-reason (permanent, attempts-exhausted, malformed, validation);
* the work queue and the retry tiers are empty.

It prints one line per check and closes with `N passed, N failed`; the exit
status is non-zero if any check failed. Its queues and exchanges are deleted
at the end, and both children are stopped.

Usage:
    pip install pika
    cargo build
    python3 tests/acceptance/pika_acceptance.py [--bin target/debug/send-worker]

Environment: SEND_WORKER_BIN (the binary), AMQP_URL (default
amqp://guest:guest@127.0.0.1:5672/%2f), ACCEPTANCE_TIMEOUT_SECS (default 300).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pika

REPO = Path(__file__).resolve().parents[2]
API_KEY = "acceptance-key-" + uuid.uuid4().hex[:12]

# Fast retries, as the issue asks: 5 attempts with waits of 25..400 ms.
RETRY_BASE_MS = 50
RETRY_FACTOR = 2.0
RETRY_CAP_MS = 400
MAX_ATTEMPTS = 5

# kind -> (count, expected outcome, expected API requests per job)
PLAN = {
    "valid": (1500, "sent", 1),
    "transient-then-ok": (100, "sent", 3),  # 503, 503, then 200
    "permanent-403": (100, "permanent", 1),
    "permanent-422": (100, "permanent", 1),
    "transient-forever": (50, "attempts-exhausted", MAX_ATTEMPTS),
    "malformed": (75, "malformed", 0),
    "invalid-e164": (75, "validation", 0),
}
EXPECTED_CODE = {"permanent-403": "40300", "permanent-422": "40310"}
BAD_NUMBERS = ["5551234567", "+0155512345", "+1-555-0100", "+1555abc0000", "+"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, timeout: float = 5.0):
    """(status, body) or (None, error text)."""
    req = urllib.request.Request(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


def tier_labels(base_ms: int, factor: float, cap_ms: int) -> list[str]:
    """The retry tier names the worker declares (src/retry.rs Backoff::tiers)."""
    delays = []
    d = max(base_ms * 0.5, 1.0)
    step = factor if factor > 1.05 else 2.0
    while d < cap_ms and len(delays) < 23:
        delays.append(int(d))
        d *= step
    delays.append(cap_ms)
    out = []
    for ms in delays:
        if not out or out[-1] != ms:
            out.append(ms)
    return [f"{ms // 1000}s" if ms >= 1000 and ms % 1000 == 0 else f"{ms}ms" for ms in out]


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "", info: str = "") -> bool:
        """`detail` explains a failure; `info` is printed either way."""
        if ok:
            self.passed += 1
            print(f"PASS  {name}" + (f" ({info})" if info else ""))
        else:
            self.failed += 1
            print(f"FAIL  {name}: " + "; ".join(x for x in (detail, info) if x))
        sys.stdout.flush()
        return ok


class Child:
    """A child process whose output goes to a file; stopped on exit."""

    def __init__(self, name: str, args: list[str], env: dict, logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.logs().splitlines()[-n:])

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM and wait; None if it had to be killed."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def stop(self):
        if self.running():
            self.terminate(30)
        self.log.close()


def child_env(extra: dict) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SEND_WORKER__")
        and k not in ("RUST_LOG", "TELNYX_API_KEY", "SIM_API_KEY")
        and not k.lower().endswith("_proxy")
    }
    env.update(extra)
    return env


def wait_until(what: str, timeout: float, cond, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def build_jobs(run: str):
    """[(kind, message_id, body, text or None)] in a shuffled order."""
    jobs = []
    for kind, (count, _, _) in PLAN.items():
        for i in range(count):
            mid = f"{run}-{kind}-{i}"
            text = f"{run} {kind} {i}"
            if kind == "valid":
                to = f"+1555{i:07d}"
            elif kind == "transient-then-ok":
                to = "+19990000503"
            elif kind == "permanent-403":
                to = "+19990000403"
            elif kind == "permanent-422":
                to = "+19990000422"
            elif kind == "transient-forever":
                to = "+19990000500"
            elif kind == "invalid-e164":
                to = BAD_NUMBERS[i % len(BAD_NUMBERS)]
            else:
                to = None
            if kind == "malformed":
                body = f"this is not JSON {{ {mid}".encode()
                jobs.append((kind, mid, body, None))
                continue
            body = json.dumps({"from": "+15551234567", "to": to, "text": text}).encode()
            jobs.append((kind, mid, body, text))
    random.Random(run).shuffle(jobs)
    return jobs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--bin",
        default=os.environ.get("SEND_WORKER_BIN", str(REPO / "target" / "debug" / "send-worker")),
    )
    ap.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    )
    ap.add_argument(
        "--timeout", type=float, default=float(os.environ.get("ACCEPTANCE_TIMEOUT_SECS", "300"))
    )
    args = ap.parse_args()

    checks = Checks()
    run = "acc" + uuid.uuid4().hex[:8]
    prefix = f"acceptance-{run}"
    names = {
        "exchange": f"{prefix}.messages",
        "queue": f"{prefix}.messages.send",
        "dlq": f"{prefix}.messages.send.dead",
        "retry_prefix": f"{prefix}.messages.send.retry",
        "events": f"{prefix}.messages.events",
    }
    tiers = [f"{names['retry_prefix']}.{label}" for label in tier_labels(RETRY_BASE_MS, RETRY_FACTOR, RETRY_CAP_MS)]
    logdir = Path(tempfile.mkdtemp(prefix="send-worker-acceptance-"))
    sim_port, ops_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    ops_url = f"http://127.0.0.1:{ops_port}"
    print(f"run {run}: binary {args.bin}, logs in {logdir}")

    children: list[Child] = []
    conn = None
    try:
        if not Path(args.bin).exists():
            raise FileNotFoundError(f"{args.bin} does not exist; run `cargo build` first")

        # -- the simulator and the worker, as child processes ---------------
        sim = Child(
            "simulate",
            [args.bin, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--latency-ms", "5"],
            child_env({"SIM_API_KEY": API_KEY}),
            logdir,
        )
        children.append(sim)

        def sim_ready():
            if not sim.running():
                raise RuntimeError(f"the simulator exited:\n{sim.tail()}")
            return http(f"{sim_url}/_sim/stats")[0] == 200

        wait_until("the simulator", 30, sim_ready)
        worker_env = child_env(
            {
                "SEND_WORKER__AMQP__URL": args.amqp_url,
                "SEND_WORKER__AMQP__EXCHANGE": names["exchange"],
                "SEND_WORKER__AMQP__QUEUE": names["queue"],
                "SEND_WORKER__AMQP__DEAD_LETTER_QUEUE": names["dlq"],
                "SEND_WORKER__AMQP__RETRY_QUEUE_PREFIX": names["retry_prefix"],
                "SEND_WORKER__AMQP__EVENTS_EXCHANGE": names["events"],
                "SEND_WORKER__TELNYX__BASE_URL": f"{sim_url}/v2",
                "SEND_WORKER__TELNYX__API_KEY": API_KEY,
                "SEND_WORKER__HTTP__LISTEN": f"127.0.0.1:{ops_port}",
                "SEND_WORKER__RETRY__BASE_MS": str(RETRY_BASE_MS),
                "SEND_WORKER__RETRY__CAP_MS": str(RETRY_CAP_MS),
                "SEND_WORKER__RETRY__FACTOR": str(RETRY_FACTOR),
                "SEND_WORKER__RETRY__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                # Unpaced, so the run takes seconds rather than 40 s at 50/s.
                "SEND_WORKER__PACING__ACCOUNT_SMS_PER_SECOND": "0",
                "SEND_WORKER__LIMITER__INITIAL_RATE": "500",
                "SEND_WORKER__LOG__FORMAT": "json",
            }
        )
        worker = Child("worker", [args.bin, "run"], worker_env, logdir)
        children.append(worker)

        def worker_ready():
            if not worker.running():
                raise RuntimeError(f"the worker exited:\n{worker.tail()}")
            return http(f"{ops_url}/readyz")[0] == 200

        wait_until("the worker's /readyz", 60, worker_ready)
        checks.check("worker ready (/readyz 200)", True)

        # -- the producer ---------------------------------------------------
        conn = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
        ch = conn.channel()
        # Result events, to check that each job ends with exactly one.
        events_q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        ch.queue_bind(events_q, names["events"], routing_key="#")
        ch.confirm_delivery()
        jobs = build_jobs(run)
        assert len(jobs) == 2000, len(jobs)
        started = time.monotonic()
        now = int(time.time())
        for kind, mid, body, _ in jobs:
            ch.basic_publish(
                names["exchange"],
                "send",
                body,
                pika.BasicProperties(
                    message_id=mid,
                    delivery_mode=2,
                    content_type="application/json",
                    timestamp=now,
                ),
                mandatory=True,
            )
        print(f"published {len(jobs)} jobs (confirmed, routed) in {time.monotonic() - started:.1f} s")

        # -- wait until everything is accounted for -------------------------
        sent_texts = {t for k, _, _, t in jobs if PLAN[k][1] == "sent"}
        dead_count = sum(c for c, outcome, _ in PLAN.values() if outcome != "sent")

        def depth(q):
            return ch.queue_declare(q, passive=True).method.message_count

        def sim_requests():
            status, body = http(f"{sim_url}/_sim/requests", timeout=10)
            if status != 200:
                raise RuntimeError(f"GET /_sim/requests: {status} {body[:200]}")
            return json.loads(body)

        def accounted():
            if not worker.running():
                raise RuntimeError(f"the worker exited:\n{worker.tail()}")
            accepted = {r["text"] for r in sim_requests() if r["status"] == 200}
            return (
                sent_texts <= accepted
                and depth(names["dlq"]) >= dead_count
                and depth(names["queue"]) == 0
                and all(depth(t) == 0 for t in tiers)
            )

        wait_until("every job accounted for", args.timeout, accounted, interval=0.5)
        elapsed = time.monotonic() - started
        # Nothing further may happen: no late duplicate, no late dead letter.
        before = len(sim_requests())
        time.sleep(2)
        requests = sim_requests()
        checks.check("accounted for, then quiet for 2 s", len(requests) == before,
                     info=f"accounted for {elapsed:.1f} s after publishing began; "
                     f"{len(requests) - before} requests after that")

        metrics_status, metrics = http(f"{ops_url}/metrics")
        checks.check("/metrics answers", metrics_status == 200, f"status {metrics_status}")
        checks.check("API key absent from /metrics", API_KEY not in metrics)

        code = worker.terminate(60)
        checks.check("worker exits 0 on SIGTERM", code == 0, f"exit status {code}")

        # -- what the API saw -----------------------------------------------
        by_text = defaultdict(list)
        for r in requests:
            by_text[r.get("text")].append(r["status"])
        for kind, (count, outcome, expected_requests) in PLAN.items():
            texts = [t for k, _, _, t in jobs if k == kind and t is not None]
            if outcome == "sent":
                bad = [t for t in texts if by_text[t].count(200) != 1]
                checks.check(f"{kind}: {count} accepted exactly once", not bad,
                             f"{len(bad)} not: e.g. {bad[:3]} -> {[by_text[t] for t in bad[:3]]}")
            else:
                bad = [t for t in texts if 200 in by_text[t]]
                checks.check(f"{kind}: never accepted", not bad, f"{len(bad)} accepted: {bad[:3]}")
            wrong = [t for t in texts if len(by_text[t]) != expected_requests]
            checks.check(f"{kind}: {expected_requests} API request(s) each", not wrong,
                         f"{len(wrong)} differ: e.g. {[(t, by_text[t]) for t in wrong[:3]]}")
        expected_total = sum(c * n for c, _, n in PLAN.values())
        checks.check("no API request beyond the jobs'", len(requests) == expected_total,
                     info=f"{len(requests)} requests, expected {expected_total}")

        # -- the dead-letter queue ------------------------------------------
        dead = {}
        dupes = []
        while True:
            method, props, body = ch.basic_get(names["dlq"], auto_ack=False)
            if method is None:
                break
            mid = props.message_id
            if mid in dead:
                dupes.append(mid)
            dead[mid] = props.headers or {}
            ch.basic_ack(method.delivery_tag)
        checks.check("DLQ holds each failing job once", not dupes, f"duplicates: {dupes[:5]}")
        kind_of = {mid: kind for kind, mid, _, _ in jobs}
        unexpected = [m for m in dead if PLAN.get(kind_of.get(m), (0, "sent"))[1] == "sent"]
        checks.check("DLQ holds no job that should have been sent", not unexpected, str(unexpected[:5]))
        for kind, (count, outcome, _) in PLAN.items():
            if outcome == "sent":
                continue
            ids = [m for k, m, _, _ in jobs if k == kind]
            missing = [m for m in ids if m not in dead]
            wrong_reason = [
                (m, dead[m].get("x-error-reason")) for m in ids if m in dead and dead[m].get("x-error-reason") != outcome
            ]
            checks.check(f"{kind}: {count} dead-lettered as {outcome}", not missing and not wrong_reason,
                         f"missing {len(missing)} {missing[:3]}, wrong reason {wrong_reason[:3]}")
            if kind in EXPECTED_CODE:
                bad = [m for m in ids if m in dead and dead[m].get("x-error-code") != EXPECTED_CODE[kind]]
                checks.check(f"{kind}: x-error-code {EXPECTED_CODE[kind]}", not bad, str(bad[:3]))
            if kind == "transient-forever":
                bad = [(m, dead[m].get("x-attempts")) for m in ids if m in dead and dead[m].get("x-attempts") != MAX_ATTEMPTS]
                checks.check(f"{kind}: x-attempts {MAX_ATTEMPTS}", not bad, str(bad[:3]))

        # -- queues and events ----------------------------------------------
        checks.check("work queue empty", depth(names["queue"]) == 0)
        left = {t: depth(t) for t in tiers}
        checks.check(f"retry tiers empty ({len(tiers)} tiers)", not any(left.values()), str(left))
        checks.check("DLQ empty after the check drained it", depth(names["dlq"]) == 0)
        events = Counter()
        wrong_events = []
        while True:
            method, _, body = ch.basic_get(events_q, auto_ack=True)
            if method is None:
                break
            e = json.loads(body)
            events[e["job_id"]] += 1
            expected = "sent" if PLAN[kind_of[e["job_id"]]][1] == "sent" else "dead_lettered"
            if e["event"] != expected:
                wrong_events.append((e["job_id"], e["event"]))
        missing_events = [m for _, m, _, _ in jobs if events[m] != 1]
        checks.check("one result event per job, of the right kind", not missing_events and not wrong_events,
                     f"{len(missing_events)} jobs without exactly one event; wrong kinds {wrong_events[:3]}")

        logs = worker.logs() + sim.logs()
        checks.check("API key absent from the logs", API_KEY not in logs)
    except Exception as e:  # noqa: BLE001 - any error is a failed acceptance
        traceback.print_exc()
        checks.check("the acceptance run completed", False, f"{type(e).__name__}: {e}")
        for c in children:
            print(f"--- last lines of {c.name} ---\n{c.tail()}")
    finally:
        for c in children:
            c.stop()
        try:
            if conn is None or conn.is_closed:
                conn = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
            ch = conn.channel()
            for q in [names["queue"], names["dlq"], *tiers]:
                ch.queue_delete(q)
            for x in [names["exchange"], names["events"]]:
                ch.exchange_delete(x)
            conn.close()
        except Exception as e:  # noqa: BLE001
            print(f"cleanup failed: {e}")

    if checks.failed:
        print(f"child logs kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
