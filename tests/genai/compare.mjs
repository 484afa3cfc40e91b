// compare.mjs - compare `tally rate --unpriced zero` output with the
// expectations of gen_cases.mjs.
//   node compare.mjs CASES.jsonl RATED.jsonl
// Tolerance: |tally - genai| <= 1e-11 + 1e-12 * |genai| (USD).
// Why: tally is exact to the pico (1e-12) per component, rounding half
// even (<= 0.5e-12 each, <= 7 components); genai-prices multiplies and
// sums IEEE doubles (relative error a few 1e-16 per operation, and prices
// like 0.18000000000000002 that we round to 12 decimals per MTok). Both
// bounds are orders of magnitude below a cent; any real semantic
// difference (wrong tier, wrong price, cache charged twice) is >= 1e-9.
import fs from 'fs';
const [casesPath, ratedPath] = process.argv.slice(2);
const cases = fs.readFileSync(casesPath, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const rated = new Map();
for (const l of fs.readFileSync(ratedPath, 'utf8').split('\n').filter(Boolean)) {
  const o = JSON.parse(l);
  rated.set(o.id, o);
}
let ok = 0, bad = 0, priced = 0, unpriced = 0, maxDiff = 0;
for (const c of cases) {
  const r = rated.get(c.event.id);
  let why = null;
  if (!r) why = 'missing from tally output';
  else if (c.expected === null) {
    if (!r.unpriced) why = `genai-prices: no price; tally: ${r.cost} (${r.price_model})`;
    else unpriced++;
  } else if (r.unpriced) why = `tally: unpriced; genai-prices: ${c.expected} (${c.matched})`;
  else {
    const ours = Number(r.cost);
    const diff = Math.abs(ours - c.expected);
    const tol = 1e-11 + 1e-12 * Math.abs(c.expected);
    if (diff > maxDiff) maxDiff = diff;
    if (diff > tol) why = `cost ${r.cost} vs genai-prices ${c.expected} (diff ${diff}) ${r.price_model} vs ${c.matched}`;
    else priced++;
  }
  if (why) { bad++; console.log(`FAIL ${c.event.id} [${c.desc}] ${c.event.data.provider}:${c.event.data.model} t=${c.event.time}: ${why}`); }
  else ok++;
}
console.log(`genai-prices agreement: ${ok}/${cases.length} ok (${priced} priced, ${unpriced} unpriced both), ` +
            `${bad} failed, max |diff| ${maxDiff.toExponential(2)} USD`);
process.exit(bad === 0 && cases.length >= 200 ? 0 : 1);
