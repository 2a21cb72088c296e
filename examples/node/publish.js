#!/usr/bin/env node
// Publish send jobs to send-worker the safe way, with amqplib: one "order
// shipped" SMS to each number given.
//
// Every job is a Telnyx POST /v2/messages body, published on a confirm
// channel (createConfirmChannel): a publish counts only once the broker has
// acked it. Each message is also
//
//   - mandatory: a message no queue takes (topology not declared, wrong
//     routing key) comes back as a 'return' event instead of vanishing;
//   - persistent, content type application/json, with the job id as
//     messageId and a timestamp.
//
// A batch is published, then its confirms are awaited together; a nacked or
// returned job is retried with a jittered backoff, and the connection is
// re-opened if it broke. Job ids come from the order, so a retry (or a rerun
// for the same order) is the same job.
//
// Usage:
//   node publish.js --order 1234 +15559876543 [+15559876544 ...]
//
// Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
// SEND_WORKER_EXCHANGE (messages), SEND_WORKER_ROUTING_KEY (send),
// ORDER_FROM (+15551234567), PUBLISH_ATTEMPTS (5). It prints
// "published <job id> to <number>" for each job; the exit status is 1 if a
// job could not be published.

'use strict';

const amqp = require('amqplib');

class Producer {
  constructor({ url, exchange, routingKey, attempts }) {
    this.url = url;
    this.exchange = exchange;
    this.routingKey = routingKey;
    this.attempts = Math.max(1, attempts);
    this.conn = null;
    this.ch = null;
    this.returned = new Set();
  }

  async open() {
    const conn = await amqp.connect(this.url);
    // An 'error' without a listener would crash the process; 'close' follows it.
    conn.on('error', () => {});
    conn.on('close', () => {
      this.conn = null;
      this.ch = null;
    });
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => {});
    ch.on('close', () => {
      this.ch = null;
    });
    // A returned (unroutable) message arrives before its ack.
    ch.on('return', (msg) => this.returned.add(msg.properties.messageId));
    this.conn = conn;
    this.ch = ch;
  }

  async close() {
    if (this.conn) {
      try {
        await this.conn.close();
      } catch {
        // already closing or closed
      }
    }
    this.conn = null;
    this.ch = null;
  }

  // Publish one job; resolves when the broker has confirmed it.
  publishOnce(job) {
    return new Promise((resolve, reject) => {
      const options = {
        messageId: job.id, // the job id: the worker's key for the job
        persistent: true,
        mandatory: true,
        contentType: 'application/json',
        timestamp: Math.floor(Date.now() / 1000),
        headers: job.headers || {},
      };
      const body = Buffer.from(JSON.stringify(job.body));
      try {
        this.ch.publish(this.exchange, this.routingKey, body, options, (err) => {
          if (err) {
            reject(new Error('nacked: the broker refused the message (the work queue may be full)'));
          } else if (this.returned.delete(job.id)) {
            reject(
              new Error(
                `unroutable: no queue is bound to ${JSON.stringify(this.exchange)} with ` +
                  `${JSON.stringify(this.routingKey)} (is the worker's topology declared?)`,
              ),
            );
          } else {
            resolve();
          }
        });
      } catch (err) {
        reject(err);
      }
    });
  }

  // Publish jobs, retrying those the broker did not take; throws with the
  // reasons of the jobs that failed every attempt.
  async publishAll(jobs) {
    let pending = jobs;
    const reasons = new Map();
    for (let attempt = 1; attempt <= this.attempts && pending.length > 0; attempt++) {
      if (attempt > 1) {
        const ms = 200 * 2 ** (attempt - 2) * (0.5 + Math.random());
        await new Promise((r) => setTimeout(r, ms));
      }
      if (!this.ch) {
        await this.close();
        try {
          await this.open();
        } catch (err) {
          for (const job of pending) reasons.set(job.id, `cannot connect: ${err.message}`);
          continue;
        }
      }
      const results = await Promise.allSettled(pending.map((job) => this.publishOnce(job)));
      const failed = [];
      results.forEach((r, i) => {
        if (r.status === 'rejected') {
          reasons.set(pending[i].id, r.reason.message);
          failed.push(pending[i]);
        } else {
          reasons.delete(pending[i].id);
        }
      });
      pending = failed;
    }
    if (pending.length > 0) {
      const lines = pending.map((job) => `job ${job.id}: ${reasons.get(job.id)}`);
      throw new Error(`${lines.join('\n')} (after ${this.attempts} attempts)`);
    }
  }
}

function usage() {
  console.error('usage: node publish.js --order ORDER_ID +15559876543 [+15559876544 ...]');
  process.exit(2);
}

async function main(argv) {
  let order = null;
  const numbers = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--order') order = argv[++i];
    else if (argv[i].startsWith('+')) numbers.push(argv[i]);
    else usage();
  }
  if (!order || numbers.length === 0) usage();
  const env = process.env;
  const producer = new Producer({
    url: env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f',
    exchange: env.SEND_WORKER_EXCHANGE || 'messages',
    routingKey: env.SEND_WORKER_ROUTING_KEY || 'send',
    attempts: Number.parseInt(env.PUBLISH_ATTEMPTS || '5', 10) || 5,
  });
  const jobs = numbers.map((to, i) => ({
    id: `order-${order}-shipped-${i + 1}`,
    body: {
      from: env.ORDER_FROM || '+15551234567',
      to,
      text: `Your order ${order} has shipped.`,
    },
  }));
  try {
    await producer.publishAll(jobs);
  } catch (err) {
    console.error(`publish: ${err.message}`);
    await producer.close();
    process.exitCode = 1;
    return;
  }
  for (const job of jobs) console.log(`published ${job.id} to ${job.body.to}`);
  await producer.close();
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(`publish: ${err.stack || err}`);
    process.exitCode = 1;
  });
}

module.exports = { Producer };
