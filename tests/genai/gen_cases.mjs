// gen_cases.mjs - price generated (model, usage, timestamp) cases with
// genai-prices' own calcPrice and print them as JSON lines:
//   {"event": <usage event for `tally rate`>, "expected": <float|null>}
// expected null = genai-prices found no price (tally must say unpriced).
//
//   node gen_cases.mjs PACKAGE_DIR DATA_JSON MODELS_TXT [N_RANDOM] [SEED]
//
// Deterministic (seeded PRNG). Cases: every model of MODELS_TXT with varied
// usage and times, edge cases (tier starts, start_date +-1 ms, time-of-day
// window edges, fallbacks, litellm prefixes, date suffixes, unknown names),
// and N_RANDOM models drawn from the whole data file.
import fs from 'fs';
import path from 'path';
import { pathToFileURL } from 'url';

const [pkgDir, dataPath, modelsPath, nRandomArg, seedArg] = process.argv.slice(2);
const { calcPrice } = await import(pathToFileURL(path.join(pkgDir, 'dist', 'index.js')).href);
const data = JSON.parse(fs.readFileSync(dataPath, 'utf8'));
const nRandom = Number(nRandomArg ?? 150);
let seed = Number(seedArg ?? 42) >>> 0;
function rnd() { // mulberry32
  seed = (seed + 0x6D2B79F5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const ri = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const pick = (a) => a[Math.floor(rnd() * a.length)];

const T0 = Date.UTC(2024, 0, 1), T1 = Date.UTC(2027, 11, 31);
function randomUsage() {
  const scale = pick([100, 5000, 50000, 250000, 1200000]);
  const input = ri(0, scale);
  const cr = rnd() < 0.5 ? ri(0, input) : 0;
  const cw = rnd() < 0.3 ? ri(0, input - cr) : 0;
  const output = ri(0, Math.max(10, Math.floor(scale / 5)));
  const u = { input_tokens: input, cache_read_tokens: cr, cache_write_tokens: cw, output_tokens: output };
  if (rnd() < 0.3) u.reasoning_tokens = ri(0, output);
  return u;
}

let n = 0;
const out = [];
function emit(provider, model, usage, timeMs, desc) {
  const gu = {
    input_tokens: usage.input_tokens, output_tokens: usage.output_tokens,
    cache_read_tokens: usage.cache_read_tokens, cache_write_tokens: usage.cache_write_tokens,
  };
  if (usage.reasoning_tokens !== undefined) gu.output_reasoning_tokens = usage.reasoning_tokens;
  let expected = null, matched = null;
  try {
    const r = calcPrice(gu, model, { providerId: provider || undefined, timestamp: new Date(timeMs) });
    if (r) { expected = r.total_price; matched = `${r.provider.id}:${r.model.id}`; }
  } catch (e) {
    return; // genai-prices rejects this combination (inconsistent data)
  }
  n++;
  const data = { provider, model, ...usage };
  out.push(JSON.stringify({
    event: {
      id: `genai-${n}`, source: 'tests/genai', type: 'ai.tokens',
      tenant_id: '00000000-0000-4000-8000-000000000001', time: timeMs, data,
    },
    expected, matched, desc,
  }));
}

// 1. the 30 listed models, 6 random cases each
const listed = fs.readFileSync(modelsPath, 'utf8').split('\n')
  .filter((l) => l && !l.startsWith('#'))
  .map((l) => { const i = l.indexOf(':'); return [l.slice(0, i), l.slice(i + 1)]; });
for (const [p, m] of listed)
  for (let k = 0; k < 6; k++) emit(p, m, randomUsage(), ri(T0, T1), 'listed');

// 2. edge cases
const u1 = { input_tokens: 200000, cache_read_tokens: 1000, cache_write_tokens: 500, output_tokens: 3000 };
const u2 = { ...u1, input_tokens: 200001 };
const t = Date.UTC(2026, 0, 15, 12);
for (const [p, m] of [['google', 'gemini-2.5-pro'], ['anthropic', 'claude-sonnet-4-5'], ['openai', 'gpt-5.4']]) {
  emit(p, m, u1, t, 'tier at start'); emit(p, m, u2, t, 'tier start+1');
  emit(p, m, { ...u1, input_tokens: 128000 }, t, 'tier 128k'); emit(p, m, { ...u1, input_tokens: 128001 }, t, 'tier 128k+1');
  emit(p, m, { ...u1, input_tokens: 272000 }, t, 'tier 272k'); emit(p, m, { ...u1, input_tokens: 272001 }, t, 'tier 272k+1');
}
for (const [p, m, d] of [['anthropic', 'claude-opus-4-6', '2026-03-13'], ['openai', 'o3', '2025-06-10'],
                         ['mistral', 'ministral-8b-latest', '2025-12-02'], ['deepseek', 'deepseek-v4-flash', '2026-08-17']]) {
  const s = Date.parse(d + 'T00:00:00Z');
  for (const dt of [-1, 0, 1]) emit(p, m, u1, s + dt, `start_date ${dt}ms`);
}
for (const [h, mi, s, ms] of [[0, 29, 59, 999], [0, 30, 0, 0], [16, 29, 59, 999], [16, 30, 0, 0], [23, 59, 59, 999], [3, 0, 0, 0]]) {
  emit('deepseek', 'deepseek-chat', u1, Date.UTC(2025, 5, 1, h, mi, s, ms), 'time_of_date');
  emit('deepseek', 'deepseek-v4-flash', u1, Date.UTC(2026, 9, 1, h, mi, s, ms), 'time_of_date');
}
for (const [p, m] of [['azure', 'gpt-5.4'], ['azure', 'claude-sonnet-4-5'], ['azure', 'deepseek-chat'], ['google', 'claude-opus-4-6'],
                      ['litellm', 'openai/gpt-4o'], ['litellm', 'gpt-4o'], ['litellm', 'claude-3-5-haiku-20241022'],
                      ['anthropic', 'claude-3-5-sonnet-20241022'], ['anthropic', 'claude-sonnet-4-5-20250929'],
                      ['OpenAI', ' GPT-4o '], ['openai', 'o4-mini'], ['mistral', 'mistral-small-latest'],
                      ['nosuchprovider', 'gpt-4o'], ['openai', 'no-such-model'], ['bedrock', 'amazon.nova-pro-v1:0'],
                      ['perplexity', 'sonar'], ['perplexity', 'sonar-deep-research']])
  for (let k = 0; k < 3; k++) emit(p, m, randomUsage(), ri(T0, T1), 'matching');

// 3. random models from the whole data set
function nameFor(rule) {
  if (rule.equals) return rule.equals;
  if (rule.starts_with) return rule.starts_with + (rnd() < 0.5 ? '' : '-x');
  if (rule.contains) return rule.contains;
  if (rule.ends_with) return 'x-' + rule.ends_with;
  if (rule.or) return nameFor(pick(rule.or));
  return null; // regex / and: covered by the listed and edge cases
}
let tries = 0, made = 0;
while (made < nRandom && tries < nRandom * 20) {
  tries++;
  const p = pick(data);
  const m = pick(p.models);
  const name = nameFor(m.match);
  if (!name) continue;
  const before = n;
  emit(p.id, name, randomUsage(), ri(T0, T1), 'random');
  if (n > before) made++;
}
process.stdout.write(out.join('\n') + '\n');
process.stderr.write(`gen_cases: ${n} cases\n`);
