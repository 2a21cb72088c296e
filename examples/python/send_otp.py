#!/usr/bin/env python3
"""Send one-time passcodes by SMS through send-worker, the safe way (pika).

Each passcode is one send job: a Telnyx `POST /v2/messages` body, published
to the worker's exchange with

* publisher confirms (`confirm_delivery`): `basic_publish` returns only once
  the broker has the message, and raises if it refused it (a nack, e.g. the
  work queue is full);
* `mandatory=True`: a message no queue takes (the topology is not declared,
  a wrong routing key) comes back as an error instead of vanishing;
* a persistent message (`delivery_mode` 2), `content_type` application/json,
  the job id as `message_id`, and `timestamp`;
* header `x-expires-at` (RFC 3339): a passcode is useless after a few
  minutes, so the worker dead-letters it as `expired` instead of sending it
  late (after an outage, say).

A refused or returned publish is retried with a jittered backoff, and the
connection is re-opened if it broke. The job id is chosen once, before the
retries, so a retry is the same job.

Usage:
    python3 send_otp.py +15559876543 [+15559876544 ...]

Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
SEND_WORKER_EXCHANGE (messages), SEND_WORKER_ROUTING_KEY (send), OTP_FROM
(the sender, +15551234567), OTP_TTL_SECONDS (300), PUBLISH_ATTEMPTS (5).
It prints `published <job id> to <number>` for each passcode; the exit status
is 1 if one could not be published.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError, NackError, UnroutableError


class PublishFailed(Exception):
    """The broker did not take the job after every attempt."""


class Producer:
    """A confirm-mode channel that publishes jobs mandatory and persistent."""

    def __init__(self, url: str, exchange: str, routing_key: str, attempts: int = 5):
        self.url = url
        self.exchange = exchange
        self.routing_key = routing_key
        self.attempts = max(1, attempts)
        self.connection = None
        self.channel = None

    def _open(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.connection.channel()
        # Publisher confirms: from now on basic_publish waits for the broker.
        self.channel.confirm_delivery()

    def _reset(self) -> None:
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:  # closing a broken connection may fail; it is gone either way
            pass
        self.connection = None
        self.channel = None

    def close(self) -> None:
        self._reset()

    def publish(self, job_id: str, body: dict, expires_at: datetime | None = None) -> None:
        headers = {}
        if expires_at is not None:
            headers["x-expires-at"] = expires_at.astimezone(timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        properties = pika.BasicProperties(
            message_id=job_id,  # the job id: the worker's key for the job
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            timestamp=int(time.time()),
            headers=headers or None,
        )
        payload = json.dumps(body).encode("utf-8")
        reason = ""
        for attempt in range(1, self.attempts + 1):
            try:
                if self.channel is None or self.channel.is_closed:
                    self._reset()
                    self._open()
                self.channel.basic_publish(
                    exchange=self.exchange,
                    routing_key=self.routing_key,
                    body=payload,
                    properties=properties,
                    mandatory=True,
                )
                return  # confirmed: the broker has it
            except UnroutableError:
                reason = (
                    f"unroutable: no queue is bound to {self.exchange!r} with "
                    f"{self.routing_key!r} (is the worker's topology declared?)"
                )
            except NackError:
                reason = "nacked: the broker refused the message (the work queue may be full)"
            except (AMQPConnectionError, AMQPChannelError) as e:
                reason = f"connection failed: {e!r}"
                self._reset()
            if attempt < self.attempts:
                time.sleep(0.2 * 2 ** (attempt - 1) * (0.5 + random.random()))
        raise PublishFailed(f"job {job_id}: {reason} (after {self.attempts} attempts)")


def main(argv: list[str]) -> int:
    numbers = argv[1:]
    if not numbers or any(not n.startswith("+") for n in numbers):
        print(__doc__.split("Usage:")[1].split("Environment:")[0].strip(), file=sys.stderr)
        return 2
    ttl = int(os.environ.get("OTP_TTL_SECONDS", "300"))
    sender = os.environ.get("OTP_FROM", "+15551234567")
    producer = Producer(
        os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        os.environ.get("SEND_WORKER_EXCHANGE", "messages"),
        os.environ.get("SEND_WORKER_ROUTING_KEY", "send"),
        attempts=int(os.environ.get("PUBLISH_ATTEMPTS", "5")),
    )
    try:
        for to in numbers:
            code = f"{secrets.randbelow(10**6):06d}"
            job_id = f"otp-{uuid.uuid4()}"
            body = {
                "from": sender,
                "to": to,
                "text": f"Your verification code is {code}. It expires in {ttl // 60} minutes.",
            }
            expires_at = datetime.now(timezone.utc) + timedelta(seconds=ttl)
            producer.publish(job_id, body, expires_at)
            print(f"published {job_id} to {to}", flush=True)
    except PublishFailed as e:
        print(f"send_otp: {e}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
