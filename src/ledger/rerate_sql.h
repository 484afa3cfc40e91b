/*
 * rerate_sql.h - the statements of tally rerate (included by rerate.c
 * only): read a day's ledger slice, lock its tenants, stage the new
 * prices, and apply the deltas to the ledger, usage_hourly, the periods
 * and the adjustments of closed periods.
 */
#ifndef TALLY_LEDGER_RERATE_SQL_H
#define TALLY_LEDGER_RERATE_SQL_H

static const char SELECT_SQL[] =
	"DECLARE rr_cur NO SCROLL CURSOR FOR"
	" SELECT l.tenant_id, l.digest, (extract(epoch FROM l.occurred_at)"
	"  * 1000)::bigint, l.meter_id, coalesce(p.name, ''),"
	"  coalesce(m.name, ''), l.quantity, coalesce(l.input_tokens, 0),"
	"  coalesce(l.output_tokens, 0), coalesce(l.cache_read_tokens, 0),"
	"  coalesce(l.cache_write_tokens, 0), coalesce(l.reasoning_tokens, -1),"
	"  coalesce(l.steps, 0), l.cost::text, coalesce(l.price_id, 0)"
	" FROM usage_ledger l LEFT JOIN providers p ON p.id = l.provider_id"
	" LEFT JOIN models m ON m.id = l.model_id"
	" WHERE l.occurred_at >= timestamptz 'epoch' + $1::bigint"
	"  * interval '1 millisecond'"
	" AND l.occurred_at < timestamptz 'epoch' + $2::bigint"
	"  * interval '1 millisecond'"
	" AND ($3::uuid IS NULL OR l.tenant_id = $3::uuid)"
	" AND ($4::text IS NULL OR m.name = $4::text" /* or an older spelling: */
	"  OR lower(btrim(m.name)) = $4::text)"
	" AND l.meter_id <> $5::smallint" /* storage: see the top */
	" FOR UPDATE OF l";

/*
 * The tenants' rows FOR UPDATE (id order) before billing_periods is read
 * and before any aggregate row is locked: it waits for the consumer's
 * batches of these tenants in flight (FOR KEY SHARE) and holds off the
 * next ones until the day commits (see the top), and a period being
 * closed (its closer holds the tenant row FOR UPDATE) is then read closed
 * (docs/aggregate.md, "Closing a period"). Blocks tally-stripe's updates
 * of these tenants for the day's transaction.
 */
static const char TENANT_LOCK_SQL[] =
	"SELECT count(*) FROM (SELECT 1 FROM tenants t WHERE t.id IN"
	" (SELECT tenant_id FROM rr_stage) ORDER BY t.id FOR UPDATE) x";

/*
 * The slice's changes, one statement each. First the ledger rows
 * (already locked by the cursor),
 * with the differences and their hour, names and closed period (bps, bpe)
 * kept in rr_delta.
 */
static const char STAGE_SQL[] =
	"CREATE TEMP TABLE IF NOT EXISTS rr_stage (tenant_id uuid,"
	" digest uuid, occurred_ms bigint, old_cost numeric,"
	" new_cost numeric, new_pid bigint, ps_ms bigint,"
	" pe_ms bigint) ON COMMIT DROP";

static const char DELTA_TABLE_SQL[] =
	"CREATE TEMP TABLE IF NOT EXISTS rr_delta (tenant_id uuid,"
	" occurred_at timestamptz, hour timestamptz, meter text,"
	" provider text, model text, d numeric, cps timestamptz,"
	" cpe timestamptz, bps timestamptz, bpe timestamptz) ON COMMIT DROP";

static const char LEDGER_SQL[] =
	"WITH s AS (SELECT tenant_id, digest, timestamptz 'epoch' + occurred_ms"
	"  * interval '1 millisecond' AS occurred_at, new_cost - old_cost AS d,"
	"  new_cost, new_pid, timestamptz 'epoch' + ps_ms * interval '1 ms'"
	"  AS cps, timestamptz 'epoch' + pe_ms * interval '1 ms' AS cpe"
	"  FROM rr_stage),"
	" led AS (UPDATE usage_ledger l SET prev_price_id = l.price_id,"
	"  price_id = s.new_pid, cost = s.new_cost FROM s"
	"  WHERE l.tenant_id = s.tenant_id AND l.digest = s.digest"
	"  AND l.occurred_at = s.occurred_at"
	"  AND l.occurred_at >= timestamptz 'epoch' + $1::bigint"
	"   * interval '1 millisecond'"
	"  AND l.occurred_at < timestamptz 'epoch' + $2::bigint"
	"   * interval '1 millisecond'"
	"  RETURNING l.tenant_id, l.occurred_at, l.meter_id, l.provider_id,"
	"  l.model_id, s.d, s.cps, s.cpe)"
	" INSERT INTO rr_delta SELECT led.tenant_id, led.occurred_at,"
	"  date_trunc('hour', led.occurred_at AT TIME ZONE 'UTC')"
	"  AT TIME ZONE 'UTC', mt.name, coalesce(p.name, ''),"
	"  coalesce(m.name, ''), led.d, led.cps, led.cpe, bp.period_start,"
	"  bp.period_end FROM led"
	"  JOIN meters mt ON mt.id = led.meter_id"
	"  LEFT JOIN providers p ON p.id = led.provider_id"
	"  LEFT JOIN models m ON m.id = led.model_id"
	"  LEFT JOIN billing_periods bp ON bp.tenant_id = led.tenant_id"
	"  AND bp.period_start <= led.occurred_at"
	"  AND led.occurred_at < bp.period_end AND bp.status <> 'open'";

/*
 * usage_hourly: the rows locked in key order first (the consumer's
 * INSERT … ORDER BY 1, 2, 3, 4, 5 … ON CONFLICT), then updated. An hourly
 * row that is gone (retention) is not created again.
 */
static const char HOURLY_LOCK_SQL[] =
	"SELECT count(*) FROM (SELECT 1 FROM usage_hourly h"
	" WHERE (h.tenant_id, h.hour, h.meter, h.provider, h.model) IN"
	"  (SELECT tenant_id, hour, meter, provider, model FROM rr_delta)"
	" ORDER BY h.tenant_id, h.hour, h.meter, h.provider, h.model"
	" FOR UPDATE OF h) x";

static const char HOURLY_SQL[] =
	"UPDATE usage_hourly h SET cost = h.cost + x.d FROM"
	" (SELECT tenant_id, hour, meter, provider, model, sum(d) AS d"
	"  FROM rr_delta GROUP BY 1, 2, 3, 4, 5) x"
	" WHERE h.tenant_id = x.tenant_id AND h.hour = x.hour"
	" AND h.meter = x.meter AND h.provider = x.provider"
	" AND h.model = x.model";

/*
 * The open period: the tenant_period_usage row containing the row, else
 * an open billing_periods row, else the period computed in C from the
 * tenant's current one. Upserted in key order (the consumer's ORDER BY
 * 1, 2): a period without a row yet (its usage all re-rated, or written
 * before the row existed) must not lose the difference. budget_state is
 * computed from the new cost as the consumer's totals do, so the outbox
 * publishes the two together.
 */
static const char PERIOD_SQL[] =
	"INSERT INTO tenant_period_usage AS u (tenant_id, period_start,"
	" period_end, cost, budget_state, version)"
	" SELECT x.tenant_id, x.ps, max(x.pe), sum(x.d),"
	TALLY_AGG_BUDGET_STATE_SQL("sum(x.d)", "max(t.monthly_budget)")
	", 1 FROM"
	" (SELECT c.tenant_id, coalesce(u2.period_start, bo.period_start,"
	"   c.cps) AS ps, coalesce(u2.period_end, bo.period_end, c.cpe)"
	"   AS pe, c.d FROM rr_delta c"
	"  LEFT JOIN tenant_period_usage u2 ON u2.tenant_id = c.tenant_id"
	"   AND c.occurred_at >= u2.period_start"
	"   AND c.occurred_at < u2.period_end"
	"  LEFT JOIN billing_periods bo ON u2.tenant_id IS NULL"
	"   AND bo.tenant_id = c.tenant_id AND bo.status = 'open'"
	"   AND bo.period_start <= c.occurred_at"
	"   AND c.occurred_at < bo.period_end"
	"  WHERE c.bps IS NULL AND c.d <> 0) x"
	" LEFT JOIN tenants t ON t.id = x.tenant_id"
	" GROUP BY x.tenant_id, x.ps HAVING sum(x.d) <> 0 ORDER BY 1, 2"
	" ON CONFLICT (tenant_id, period_start) DO UPDATE SET"
	"  cost = u.cost + EXCLUDED.cost, version = u.version + 1,"
	"  updated_at = now(), budget_state = coalesce((SELECT"
	TALLY_AGG_BUDGET_STATE_SQL("u.cost + EXCLUDED.cost", "t.monthly_budget")
	"  FROM tenants t WHERE t.id = u.tenant_id), 'unlimited')";

/* Closed periods: adjustments (inserts only: no row locks to order). A
 * change of price_id alone (the same cost) moves no money: no adjustment,
 * and above, no period version bumped. */
static const char ADJUST_SQL[] =
	"WITH adj AS (INSERT INTO usage_adjustments (tenant_id, period_start,"
	"  period_end, kind, meter, provider, model, cost)"
	"  SELECT tenant_id, bps, bpe, 'rerate', meter, provider, model, sum(d)"
	"  FROM rr_delta WHERE bps IS NOT NULL AND d <> 0"
	"  GROUP BY 1, 2, 3, 5, 6, 7 HAVING sum(d) <> 0)"
	" SELECT count(*), count(*) FILTER (WHERE bps IS NOT NULL)"
	" FROM rr_delta";

#endif
