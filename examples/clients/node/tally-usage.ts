// Publish tally usage events from TypeScript on Node.
//
// Two ways in, both shown here:
//   - Kafka (kafkajs): one msgpack map per event on billing.usage, keyed by
//     the tenant id, with the CloudEvents headers (schemas/usage-event.md);
//   - HTTP: POST a JSON array of events to tally-relay's /v1/events with the
//     tenant's API key.
//
// Every event needs a stable id (unique per source): re-sending the same
// event after a failure is safe, tally counts it once.
//
//   npx tsc && node dist/tally-usage.js kafka --brokers 127.0.0.1:9092 --tenant UUID --count 100
//   node dist/tally-usage.js http --url http://127.0.0.1:8080 --key tk_... --tenant UUID
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import { encode } from '@msgpack/msgpack';

import type { Message } from 'kafkajs';

/** One usage event (schemas/usage-event.md); time is unix ms, UTC. */
export interface UsageEvent {
  id: string;          // unique per source: the dedupe key
  source: string;
  type: 'ai.tokens' | 'workflow.execution' | 'storage.snapshot' | 'api.call';
  tenant_id: string;
  time: number;
  subject?: string;
  data: Record<string, string | number>;
}

/** Event i of the sample workload (see the test's totals). */
export function aiEvent(tenant: string, source: string, i: number, baseMs: number): UsageEvent {
  return {
    id: `req-${i}`, source, type: 'ai.tokens', tenant_id: tenant,
    time: baseMs + i * 1000,                 // unix ms, UTC
    subject: `user-${i % 5}`,
    data: {
      provider: 'openai', model: 'gpt-4o',
      input_tokens: 100 + i,                 // includes the cached part
      output_tokens: 10 + (i % 7),
      cache_read_tokens: (i % 3) * 10,
    },
  };
}

/** The Kafka message: key, msgpack value, CloudEvents headers. */
export function message(ev: UsageEvent): Message {
  return {
    key: ev.tenant_id,
    value: Buffer.from(encode(ev)),
    headers: {
      ce_specversion: '1.0', ce_id: ev.id, ce_source: ev.source,
      ce_type: ev.type, ce_time: new Date(ev.time).toISOString(),
      'content-type': 'application/msgpack',
    },
  };
}

async function sendKafka(brokers: string, topic: string, events: UsageEvent[]): Promise<void> {
  const kafka = new Kafka({ clientId: 'node-engine', brokers: brokers.split(','),
                            logLevel: logLevel.ERROR });
  // idempotent: the client's own retries never duplicate (acks=all)
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    for (let k = 0; k < events.length; k += 500)
      await producer.send({ topic, acks: -1, messages: events.slice(k, k + 500).map(message) });
  } finally {
    await producer.disconnect();
  }
}

async function sendHttp(url: string, key: string, events: UsageEvent[]): Promise<void> {
  for (let k = 0; k < events.length; k += 100) {
    const res = await fetch(`${url}/v1/events`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` },
      body: JSON.stringify(events.slice(k, k + 100)),
    });
    // 429/503: wait and re-send the same batch (tally dedupes by source+id)
    if (res.status !== 202) throw new Error(`status ${res.status}: ${await res.text()}`);
  }
}

const { positionals, values: a } = parseArgs({
  allowPositionals: true,
  options: {
    tenant: { type: 'string' }, count: { type: 'string', default: '100' },
    resend: { type: 'string', default: '0' }, source: { type: 'string', default: 'node-engine' },
    'base-ms': { type: 'string', default: '1764547200000' },
    brokers: { type: 'string', default: '127.0.0.1:9092' },
    topic: { type: 'string', default: 'billing.usage' },
    url: { type: 'string' }, key: { type: 'string' },
  },
});
const mode = positionals[0] ?? 'kafka';
const events: UsageEvent[] = [];
for (let i = 0; i < Number(a.count); i++)
  events.push(aiEvent(a.tenant ?? '', a.source, i, Number(a['base-ms'])));
events.push(...events.slice(0, Number(a.resend)));
if (mode === 'kafka') await sendKafka(a.brokers, a.topic, events);
else await sendHttp(a.url ?? '', a.key ?? '', events);
console.log(`node: sent ${events.length} events (${mode})`);
