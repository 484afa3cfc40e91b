-- 0019_finance_stripe_mrr.sql: MRR from what Stripe charges, per currency,
-- with its monthly movements and net revenue retention (docs/finance.md).
--
-- * subscription_versions, subscription_version_items,
--   subscription_version_discounts: every version of a Stripe subscription
--   tally-stripe has seen (webhook or API read), with its items (price,
--   quantity, billing interval) and discounts (coupon, duration, start,
--   end). A version is kept even when it arrives after a newer one: it is
--   history, and MRR of a past month is computed from the version in force
--   then. Amounts are Stripe minor units, exact (numeric).
-- * tally_subscription_mrr_minor(): one subscription's MRR at an instant,
--   in minor units: what Stripe charges for the billing period in force
--   (price x quantity, discounts as Stripe applies them), normalised to a
--   month and rounded once to the minor unit.
-- * The finance views are rebuilt on it, one row per currency: amounts are
--   never added across currencies. MRR of month M is the state at the end
--   of M; movements compare it per customer (tenant) with the end of M-1.

CREATE TABLE subscription_versions (
    tenant_id            uuid NOT NULL,
    subscription_id      text NOT NULL,
    as_of                timestamptz NOT NULL,  -- Stripe time of the version
    as_of_rank           smallint NOT NULL,
    status               text NOT NULL,
    currency             char(3),
    billing_cycle_anchor timestamptz,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subscription_id, as_of, as_of_rank)
);

CREATE TABLE subscription_version_items (
    tenant_id        uuid NOT NULL,
    subscription_id  text NOT NULL,
    as_of            timestamptz NOT NULL,
    as_of_rank       smallint NOT NULL,
    item_id          text NOT NULL,
    price_id         text,
    quantity         bigint NOT NULL CHECK (quantity >= 0),
    -- price.unit_amount_decimal (minor units, may have decimals); NULL for
    -- a price without a unit amount (tiered): not in MRR
    unit_amount      numeric CHECK (unit_amount >= 0),
    currency         char(3),
    recurring_interval text CHECK (recurring_interval IN
                         ('day', 'week', 'month', 'year')),
    interval_count   integer CHECK (interval_count BETWEEN 1 AND 1000),
    usage_type       text NOT NULL DEFAULT 'licensed',  -- metered: usage
    PRIMARY KEY (tenant_id, subscription_id, as_of, as_of_rank, item_id),
    FOREIGN KEY (tenant_id, subscription_id, as_of, as_of_rank)
        REFERENCES subscription_versions ON DELETE CASCADE
);

CREATE TABLE subscription_version_discounts (
    tenant_id          uuid NOT NULL,
    subscription_id    text NOT NULL,
    as_of              timestamptz NOT NULL,
    as_of_rank         smallint NOT NULL,
    discount_id        text NOT NULL,
    position           integer NOT NULL,  -- Stripe's order of application
    item_id            text,              -- NULL: the whole subscription
    coupon_id          text,
    percent_off        numeric CHECK (percent_off > 0 AND percent_off <= 100),
    amount_off         numeric CHECK (amount_off >= 0),   -- minor units
    currency           char(3),
    duration           text NOT NULL CHECK (duration IN
                           ('once', 'repeating', 'forever')),
    duration_in_months integer CHECK (duration_in_months BETWEEN 1 AND 1200),
    starts_at          timestamptz NOT NULL,
    ends_at            timestamptz,
    CHECK ((percent_off IS NULL) <> (amount_off IS NULL)),
    PRIMARY KEY (tenant_id, subscription_id, as_of, as_of_rank, discount_id),
    FOREIGN KEY (tenant_id, subscription_id, as_of, as_of_rank)
        REFERENCES subscription_versions ON DELETE CASCADE
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['subscription_versions',
        'subscription_version_items', 'subscription_version_discounts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I TO %I USING (true)'
                       ' WITH CHECK (true)', t || '_owner', t, current_user);
        EXECUTE format('CREATE POLICY %I ON %I TO tally_engine USING (true)'
                       ' WITH CHECK (true)', t || '_engine', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO tally_finance'
                       ' USING (true)', t || '_finance_read', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO tally_tenant'
                       ' USING (tenant_id = tally_current_tenant())',
                       t || '_tenant', t);
        EXECUTE format('GRANT SELECT ON %I TO tally_tenant, tally_finance', t);
    END LOOP;
END $$;

-- The start of the billing period that contains instant t, for periods of
-- n units (day, week, month, year) from anchor. Calendar arithmetic in UTC:
-- a period anchored on the 31st starts on the last day of shorter months,
-- as Stripe bills it.
CREATE FUNCTION tally_period_start(anchor timestamptz, unit text, n integer,
                                   t timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    a timestamp := anchor AT TIME ZONE 'UTC';
    x timestamp := t AT TIME ZONE 'UTC';
    step interval;
    k bigint;
BEGIN
    IF unit IN ('month', 'year') THEN
        step := make_interval(months => n * CASE unit WHEN 'year' THEN 12
                                                   ELSE 1 END);
        k := floor(((extract(year FROM x) - extract(year FROM a)) * 12
                    + extract(month FROM x) - extract(month FROM a))
                   / (n * CASE unit WHEN 'year' THEN 12 ELSE 1 END));
    ELSE
        step := make_interval(days => n * CASE unit WHEN 'week' THEN 7
                                                 ELSE 1 END);
        k := floor(extract(epoch FROM x - a) / extract(epoch FROM step));
    END IF;
    WHILE a + k * step > x LOOP
        k := k - 1;
    END LOOP;
    WHILE a + (k + 1) * step <= x LOOP
        k := k + 1;
    END LOOP;
    RETURN (a + k * step) AT TIME ZONE 'UTC';
END $$;

-- Whether a discount applies to the invoice of the billing period starting
-- at p (the previous one started at prev; is_first: p is the subscription's
-- first period). Stripe applies a discount to the invoices created while it
-- is in force: once -> the first invoice at or after its start; repeating
-- -> every invoice whose period starts in [start, end) (so an annual plan's
-- whole year when the year starts in it); forever -> every invoice from
-- its start.
CREATE FUNCTION tally_discount_applies(duration text, months integer,
    starts_at timestamptz, ends_at timestamptz, p timestamptz,
    prev timestamptz, is_first boolean)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
SELECT starts_at <= p AND CASE duration
    WHEN 'once' THEN is_first OR prev < starts_at
    WHEN 'repeating' THEN p < coalesce(ends_at,
        ((starts_at AT TIME ZONE 'UTC') + make_interval(months => months))
        AT TIME ZONE 'UTC')
    ELSE ends_at IS NULL OR p < ends_at END
$$;

-- A billing period's amount (minor units) as a month, rounded once to the
-- minor unit, half away from zero: tally's one rounding of MRR.
CREATE FUNCTION tally_monthly_minor(amount numeric, unit text, n integer)
RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
SELECT round(amount * CASE unit WHEN 'day' THEN 365 WHEN 'week' THEN 52
                                ELSE 1 END
             / (n * CASE unit WHEN 'month' THEN 1 ELSE 12 END))
$$;

-- One subscription's MRR just before instant t, in minor units of its
-- currency: the version in force before t (the first one if none was yet),
-- its licensed items' unit amount x quantity (each line rounded to the
-- minor unit, as Stripe's invoice lines are), minus the discounts that
-- apply to the billing period in force (item discounts first, then the
-- subscription's, each in Stripe's order: a percentage of what is left,
-- rounded to the minor unit, or an amount, never below zero), divided by
-- the period's length in months (year 12, week 12/52, day 12/365, times
-- interval_count) and rounded once, half away from zero. NULL when no
-- version was recorded (the caller falls back to the plan's price).
CREATE FUNCTION tally_subscription_mrr_minor(p_tenant uuid, p_sub text,
                                             t timestamptz)
RETURNS numeric LANGUAGE plpgsql STABLE AS $$
DECLARE
    v record;
    s record;
    it record;
    d record;
    unit text;
    n integer;
    anchor timestamptz;
    p timestamptz;
    prev timestamptz;
    is_first boolean;
    line numeric;
    total numeric := 0;
    off numeric;
BEGIN
    SELECT * INTO v FROM subscription_versions
     WHERE tenant_id = p_tenant AND subscription_id = p_sub AND as_of < t
     ORDER BY as_of DESC, as_of_rank DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT * INTO v FROM subscription_versions
         WHERE tenant_id = p_tenant AND subscription_id = p_sub
         ORDER BY as_of, as_of_rank LIMIT 1;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    IF v.status = 'paused' THEN
        RETURN 0;
    END IF;
    SELECT stripe_created INTO s FROM subscriptions
     WHERE tenant_id = p_tenant AND subscription_id = p_sub;
    -- Stripe bills every item of a subscription on one interval
    SELECT recurring_interval, interval_count INTO unit, n
      FROM subscription_version_items
     WHERE tenant_id = v.tenant_id AND subscription_id = v.subscription_id
       AND as_of = v.as_of AND as_of_rank = v.as_of_rank
       AND usage_type = 'licensed' AND unit_amount IS NOT NULL
       AND recurring_interval IS NOT NULL
     ORDER BY item_id LIMIT 1;
    IF unit IS NULL THEN
        RETURN 0;
    END IF;
    anchor := coalesce(v.billing_cycle_anchor, s.stripe_created);
    p := tally_period_start(anchor, unit, n, t - interval '1 microsecond');
    prev := tally_period_start(anchor, unit, n, p - interval '1 microsecond');
    is_first := p <= s.stripe_created;
    p := greatest(p, s.stripe_created);
    FOR it IN SELECT * FROM subscription_version_items
               WHERE tenant_id = v.tenant_id
                 AND subscription_id = v.subscription_id
                 AND as_of = v.as_of AND as_of_rank = v.as_of_rank
                 AND usage_type = 'licensed' AND unit_amount IS NOT NULL
                 AND recurring_interval = unit AND interval_count = n
               ORDER BY item_id
    LOOP
        line := round(it.unit_amount * it.quantity);
        FOR d IN SELECT * FROM subscription_version_discounts
                  WHERE tenant_id = v.tenant_id
                    AND subscription_id = v.subscription_id
                    AND as_of = v.as_of AND as_of_rank = v.as_of_rank
                    AND item_id = it.item_id
                  ORDER BY position, discount_id
        LOOP
            CONTINUE WHEN NOT tally_discount_applies(d.duration,
                d.duration_in_months, d.starts_at, d.ends_at, p, prev,
                is_first);
            off := coalesce(round(line * d.percent_off / 100), d.amount_off);
            line := line - least(off, line);
        END LOOP;
        total := total + line;
    END LOOP;
    FOR d IN SELECT * FROM subscription_version_discounts
              WHERE tenant_id = v.tenant_id
                AND subscription_id = v.subscription_id
                AND as_of = v.as_of AND as_of_rank = v.as_of_rank
                AND item_id IS NULL
              ORDER BY position, discount_id
    LOOP
        CONTINUE WHEN NOT tally_discount_applies(d.duration,
            d.duration_in_months, d.starts_at, d.ends_at, p, prev, is_first);
        -- an amount off in another currency is not applied by Stripe
        CONTINUE WHEN d.amount_off IS NOT NULL AND d.currency IS NOT NULL
            AND v.currency IS NOT NULL AND upper(d.currency) <> v.currency;
        off := coalesce(round(total * d.percent_off / 100), d.amount_off);
        total := total - least(off, total);
    END LOOP;
    -- the one rounding of tally's own: the period's charge as a month
    RETURN tally_monthly_minor(total, unit, n);
END $$;

-- Minor units (an integer) in currency units with the currency's digits,
-- exactly: 41100 USD -> 411.00, 500 JPY -> 500.
CREATE FUNCTION tally_minor_units(amount numeric, currency text)
RETURNS numeric LANGUAGE sql IMMUTABLE AS
$$ SELECT round(tally_from_minor(amount, currency), coalesce(
       (SELECT minor_digits FROM currencies WHERE code = upper(currency)),
       2)) $$;

-- The months of finance (0005), behind a function whose row estimate is
-- a few years, not generate_series' thousand: with it the views' plans
-- stay cheap enough that PostgreSQL does not JIT-compile them.
CREATE FUNCTION tally_finance_months()
RETURNS TABLE (month timestamptz, month_end timestamptz)
LANGUAGE sql STABLE ROWS 36 SET jit = off AS $$
SELECT m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC'
FROM generate_series(
    date_trunc('month', least(
        coalesce((SELECT min(stripe_created) FROM subscriptions), now()),
        coalesce((SELECT min(hour) FROM usage_hourly), now())) AT TIME ZONE 'UTC'),
    date_trunc('month', now() AT TIME ZONE 'UTC'),
    interval '1 month') AS m
$$;
CREATE OR REPLACE VIEW finance_months AS
SELECT month, month_end FROM tally_finance_months();

-- Every finance view is rebuilt below (their grain is now per currency).
DROP VIEW finance_clv, finance_revenue_by_plan, finance_churn, finance_arr,
    finance_mrr, finance_usage_monthly, finance_subscription_months;

-- A subscription pays at instant t when it started before t, had not ended
-- by t, is not incomplete and its trial (if any) ended before t.
CREATE FUNCTION tally_subscription_pays(created timestamptz,
    ended timestamptz, status text, trial_end timestamptz, t timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
SELECT created < t AND (ended IS NULL OR ended >= t)
   AND status NOT IN ('incomplete', 'incomplete_expired')
   AND (trial_end IS NULL OR trial_end < t)
$$;

-- Per month, every subscription live at some time in it. mrr_minor: its
-- MRR at the end of the month (0 unless paying then); start_mrr_minor: at
-- the start (the end of the previous month). plan_price: mrr in currency
-- units. A function under the view: the planner cannot see through the
-- per-subscription computation, estimates millions of rows and would
-- spend seconds JIT-compiling every query of the views above it.
CREATE FUNCTION tally_finance_subscription_months()
RETURNS TABLE (month timestamptz, tenant_id uuid, subscription_id text,
               plan text, plan_price numeric, live_at_start boolean,
               ended_in_month boolean, paying boolean, currency char(3),
               customer_id text, mrr_minor numeric, start_mrr_minor numeric)
LANGUAGE sql STABLE ROWS 1000 SET jit = off AS $$
WITH sm AS MATERIALIZED (
    SELECT fm.month, s.tenant_id, s.subscription_id, s.plan,
           (s.stripe_created < fm.month) AS live_at_start,
           (coalesce(s.ended_at, s.canceled_at) >= fm.month
            AND coalesce(s.ended_at, s.canceled_at) < fm.month_end)
             AS ended_in_month,
           tally_subscription_pays(s.stripe_created,
               coalesce(s.ended_at, s.canceled_at), s.status, s.trial_end,
               fm.month_end) AS paying,
           c.currency, s.customer_id,
           CASE WHEN NOT tally_subscription_pays(s.stripe_created,
               coalesce(s.ended_at, s.canceled_at), s.status, s.trial_end,
               fm.month_end) THEN 0
                WHEN v.as_of IS NULL THEN c.fallback
                WHEN v.status = 'paused' OR f.unit IS NULL THEN 0
                -- discounts depend on the billing period: worked out by
                -- the function; without any, the items' sum as a month
                WHEN EXISTS (SELECT 1 FROM subscription_version_discounts d
                             WHERE d.tenant_id = v.tenant_id
                               AND d.subscription_id = v.subscription_id
                               AND d.as_of = v.as_of
                               AND d.as_of_rank = v.as_of_rank)
                THEN tally_subscription_mrr_minor(s.tenant_id,
                         s.subscription_id, fm.month_end)
                ELSE tally_monthly_minor(g.gross, f.unit, f.n) END
             AS mrr_minor
    FROM finance_months fm
    JOIN subscriptions s
      ON s.stripe_created < fm.month_end
     AND (coalesce(s.ended_at, s.canceled_at) IS NULL
          OR coalesce(s.ended_at, s.canceled_at) >= fm.month)
     AND s.status NOT IN ('incomplete', 'incomplete_expired')
    LEFT JOIN plans p ON p.id = s.plan
    -- the version in force at the end of the month (else the first)
    LEFT JOIN LATERAL (
        (SELECT * FROM subscription_versions v
          WHERE v.tenant_id = s.tenant_id
            AND v.subscription_id = s.subscription_id
            AND v.as_of < fm.month_end
          ORDER BY v.as_of DESC, v.as_of_rank DESC LIMIT 1)
        UNION ALL
        (SELECT * FROM subscription_versions v
          WHERE v.tenant_id = s.tenant_id
            AND v.subscription_id = s.subscription_id
          ORDER BY v.as_of, v.as_of_rank LIMIT 1)
        LIMIT 1
    ) v ON true
    LEFT JOIN LATERAL (
        SELECT i.recurring_interval AS unit, i.interval_count AS n
        FROM subscription_version_items i
        WHERE i.tenant_id = v.tenant_id
          AND i.subscription_id = v.subscription_id
          AND i.as_of = v.as_of AND i.as_of_rank = v.as_of_rank
          AND i.usage_type = 'licensed' AND i.unit_amount IS NOT NULL
          AND i.recurring_interval IS NOT NULL
        ORDER BY i.item_id LIMIT 1
    ) f ON true
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(round(i.unit_amount * i.quantity)), 0) AS gross
        FROM subscription_version_items i
        WHERE i.tenant_id = v.tenant_id
          AND i.subscription_id = v.subscription_id
          AND i.as_of = v.as_of AND i.as_of_rank = v.as_of_rank
          AND i.usage_type = 'licensed' AND i.unit_amount IS NOT NULL
          AND i.recurring_interval = f.unit AND i.interval_count = f.n
    ) g ON true
    CROSS JOIN LATERAL (
        -- without a version mirrored: the plan's price x quantity, in the
        -- plan's currency
        SELECT cc.currency,
               round(coalesce(p.monthly_price, 0) * coalesce(s.quantity, 1)
                 * 10::numeric ^ coalesce((SELECT minor_digits
                     FROM currencies WHERE code = cc.currency), 2))
                 AS fallback
        FROM (SELECT upper(CASE WHEN v.as_of IS NOT NULL
                                THEN coalesce(s.currency, p.currency, 'USD')
                                ELSE coalesce(p.currency, s.currency, 'USD')
                           END)::char(3) AS currency) cc
    ) c
)
-- at the start of a month = at the end of the previous one (a
-- subscription paying then was live in that month too)
SELECT sm.month, sm.tenant_id, sm.subscription_id, sm.plan,
       round(sm.mrr_minor / 10::numeric ^ coalesce(cu.minor_digits, 2),
             coalesce(cu.minor_digits, 2)),
       sm.live_at_start, sm.ended_in_month, sm.paying, sm.currency,
       sm.customer_id, sm.mrr_minor,
       coalesce(lag(sm.mrr_minor) OVER (PARTITION BY sm.tenant_id,
                    sm.subscription_id ORDER BY sm.month), 0)
FROM sm LEFT JOIN currencies cu ON cu.code = sm.currency
$$;

CREATE VIEW finance_subscription_months AS
SELECT * FROM tally_finance_subscription_months();

-- Usage revenue of a month (0009) in the tenant's currency (usage is
-- priced in tenants.currency).
CREATE VIEW finance_usage_monthly AS
SELECT u.month, u.tenant_id, sum(u.usage_revenue) AS usage_revenue,
       upper(coalesce(t.currency, 'USD'))::char(3) AS currency
FROM (
    SELECT date_trunc('month', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             AS month, tenant_id, sum(cost) AS usage_revenue
    FROM usage_hourly GROUP BY 1, 2
    UNION ALL
    SELECT date_trunc('month', period_start AT TIME ZONE 'UTC')
             AT TIME ZONE 'UTC', tenant_id, sum(storage_cost)
    FROM tenant_period_usage WHERE storage_cost <> 0 GROUP BY 1, 2
    UNION ALL
    SELECT date_trunc('month', period_start AT TIME ZONE 'UTC')
             AT TIME ZONE 'UTC', tenant_id, sum(cost)
    FROM usage_adjustments WHERE kind = 'storage' GROUP BY 1, 2
) u
LEFT JOIN tenants t ON t.id = u.tenant_id
GROUP BY u.month, u.tenant_id, t.currency;

-- Per tenant (Stripe customer), month and currency: MRR at the end of the
-- month, in minor units; a row for every month from the tenant's first
-- subscription on, zeros included.
CREATE VIEW finance_tenant_mrr AS
WITH sm AS (
    SELECT month, tenant_id, currency, sum(mrr_minor) AS mrr_minor
    FROM finance_subscription_months GROUP BY 1, 2, 3
), span AS (
    SELECT tenant_id, currency, min(month) AS first_month
    FROM sm GROUP BY 1, 2
)
SELECT fm.month, sp.tenant_id, sp.currency,
       coalesce(sm.mrr_minor, 0) AS mrr_minor
FROM span sp
JOIN finance_months fm ON fm.month >= sp.first_month
LEFT JOIN sm ON sm.month = fm.month AND sm.tenant_id = sp.tenant_id
            AND sm.currency = sp.currency;

CREATE VIEW finance_mrr AS
WITH sub AS (
    SELECT month, currency,
           sum(mrr_minor) FILTER (WHERE paying) AS plan_mrr_minor,
           count(*) FILTER (WHERE paying) AS paying_subscriptions
    FROM finance_subscription_months GROUP BY 1, 2
), u AS (
    SELECT month, currency, sum(usage_revenue) AS usage_revenue
    FROM finance_usage_monthly GROUP BY 1, 2
), cur AS (
    SELECT currency FROM sub UNION SELECT currency FROM u
)
SELECT fm.month,
       tally_minor_units(coalesce(sub.plan_mrr_minor, 0), cur.currency)
         AS plan_mrr,
       coalesce(u.usage_revenue, 0) AS usage_revenue,
       tally_minor_units(coalesce(sub.plan_mrr_minor, 0), cur.currency)
         + coalesce(u.usage_revenue, 0) AS mrr,
       coalesce(sub.paying_subscriptions, 0) AS paying_subscriptions,
       cur.currency
FROM finance_months fm
CROSS JOIN cur
LEFT JOIN sub ON sub.month = fm.month AND sub.currency = cur.currency
LEFT JOIN u ON u.month = fm.month AND u.currency = cur.currency;

CREATE VIEW finance_arr AS
SELECT month, plan_mrr * 12 AS plan_arr, mrr * 12 AS arr, currency
FROM finance_mrr;

-- Logo churn counts subscriptions; revenue churn their MRR at the start of
-- the month (the end of the previous one).
CREATE VIEW finance_churn AS
SELECT month,
       count(*) FILTER (WHERE live_at_start) AS subscriptions_at_start,
       count(*) FILTER (WHERE ended_in_month) AS churned_subscriptions,
       CASE WHEN count(*) FILTER (WHERE live_at_start) = 0 THEN NULL
            ELSE round(count(*) FILTER (WHERE ended_in_month)::numeric
                       / count(*) FILTER (WHERE live_at_start), 6) END
           AS logo_churn_rate,
       tally_minor_units(coalesce(sum(start_mrr_minor)
           FILTER (WHERE live_at_start), 0), currency) AS plan_mrr_at_start,
       tally_minor_units(coalesce(sum(start_mrr_minor)
           FILTER (WHERE ended_in_month AND live_at_start), 0), currency)
           AS churned_plan_mrr,
       CASE WHEN coalesce(sum(start_mrr_minor) FILTER (WHERE live_at_start),
                          0) = 0 THEN NULL
            ELSE round(coalesce(sum(start_mrr_minor)
                   FILTER (WHERE ended_in_month AND live_at_start), 0)
                 / sum(start_mrr_minor) FILTER (WHERE live_at_start), 6) END
           AS revenue_churn_rate,
       currency
FROM finance_subscription_months
GROUP BY month, currency;

CREATE VIEW finance_revenue_by_plan AS
SELECT sm.month, sm.plan,
       count(*) FILTER (WHERE sm.paying) AS paying_subscriptions,
       tally_minor_units(coalesce(sum(sm.mrr_minor) FILTER (WHERE sm.paying),
                                 0), sm.currency) AS plan_revenue,
       coalesce(sum(u.usage_revenue), 0) AS usage_revenue,
       sm.currency
FROM finance_subscription_months sm
LEFT JOIN (SELECT month, tenant_id, currency,
                  sum(usage_revenue) AS usage_revenue
           FROM finance_usage_monthly GROUP BY 1, 2, 3) u
       ON u.month = sm.month AND u.tenant_id = sm.tenant_id
      AND u.currency = sm.currency
GROUP BY sm.month, sm.plan, sm.currency;

-- MRR movements of month M per currency, customer by customer (prev: MRR
-- at the end of M-1, cur: at the end of M): new (prev 0, cur > 0, never
-- any MRR before), reactivation (prev 0, cur > 0, MRR in some earlier
-- month), expansion (0 < prev < cur: cur - prev), contraction (0 < cur <
-- prev: prev - cur), churned (prev > 0, cur 0: prev).
-- start + new + reactivation + expansion - contraction - churned = end.
CREATE VIEW finance_mrr_movements AS
WITH t AS (
    SELECT month, tenant_id, currency, mrr_minor AS cur,
           coalesce(lag(mrr_minor) OVER w, 0) AS prev,
           coalesce(max(mrr_minor) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                                          AND 2 PRECEDING), 0) AS earlier
    FROM finance_tenant_mrr
    WINDOW w AS (PARTITION BY tenant_id, currency ORDER BY month)
), m AS (
    SELECT month, currency,
           sum(prev) AS start_minor, sum(cur) AS end_minor,
           coalesce(sum(cur) FILTER (WHERE prev = 0 AND cur > 0
                                     AND earlier = 0), 0) AS new_minor,
           coalesce(sum(cur) FILTER (WHERE prev = 0 AND cur > 0
                                     AND earlier > 0), 0) AS react_minor,
           coalesce(sum(cur - prev) FILTER (WHERE prev > 0 AND cur > prev),
                    0) AS exp_minor,
           coalesce(sum(prev - cur) FILTER (WHERE cur > 0 AND cur < prev),
                    0) AS contr_minor,
           coalesce(sum(prev) FILTER (WHERE prev > 0 AND cur = 0), 0)
             AS churn_minor,
           count(*) FILTER (WHERE prev > 0) AS customers_at_start,
           count(*) FILTER (WHERE cur > 0) AS customers_at_end
    FROM t GROUP BY month, currency
)
SELECT month, currency,
       tally_minor_units(start_minor, currency) AS start_mrr,
       tally_minor_units(new_minor, currency) AS new_mrr,
       tally_minor_units(exp_minor, currency) AS expansion_mrr,
       tally_minor_units(contr_minor, currency) AS contraction_mrr,
       tally_minor_units(churn_minor, currency) AS churned_mrr,
       tally_minor_units(react_minor, currency) AS reactivation_mrr,
       tally_minor_units(new_minor + react_minor + exp_minor - contr_minor
                        - churn_minor, currency) AS net_new_mrr,
       tally_minor_units(end_minor, currency) AS end_mrr,
       customers_at_start, customers_at_end
FROM m;

-- Net revenue retention of month M: of the customers with MRR at the start
-- of M, (start + expansion - contraction - churned) / start, which is
-- their MRR at the end over their MRR at the start (NULL without any).
CREATE VIEW finance_nrr AS
SELECT month, currency, start_mrr, expansion_mrr, contraction_mrr,
       churned_mrr,
       start_mrr + expansion_mrr - contraction_mrr - churned_mrr
         AS retained_mrr,
       CASE WHEN start_mrr = 0 THEN NULL
            ELSE round((start_mrr + expansion_mrr - contraction_mrr
                        - churned_mrr) / start_mrr, 6) END AS nrr
FROM finance_mrr_movements;

-- CLV per plan and currency over the 12 complete months before as_of's
-- month: average monthly revenue per paying account / average monthly
-- logo churn (NULL while churn is 0). finance_clv is it as of now.
CREATE FUNCTION tally_finance_clv(as_of timestamptz)
RETURNS TABLE (plan text, arpa_monthly numeric, monthly_logo_churn numeric,
               clv numeric, currency char(3))
LANGUAGE sql STABLE AS $$
WITH window_months AS (
    SELECT month FROM finance_months
    WHERE month >= (date_trunc('month', as_of AT TIME ZONE 'UTC')
                    - interval '12 months') AT TIME ZONE 'UTC'
      AND month <  date_trunc('month', as_of AT TIME ZONE 'UTC')
                   AT TIME ZONE 'UTC'
), per_plan AS (
    SELECT r.plan, r.currency,
           avg(CASE WHEN r.paying_subscriptions = 0 THEN NULL
                    ELSE (r.plan_revenue + r.usage_revenue)
                         / r.paying_subscriptions END) AS arpa_monthly
    FROM finance_revenue_by_plan r JOIN window_months w USING (month)
    GROUP BY r.plan, r.currency
), churn AS (
    SELECT c.plan, c.currency,
           avg(CASE WHEN c.live = 0 THEN NULL
                    ELSE c.ended::numeric / c.live END) AS monthly_logo_churn
    FROM (SELECT month, plan, currency,
                 count(*) FILTER (WHERE live_at_start) AS live,
                 count(*) FILTER (WHERE ended_in_month) AS ended
          FROM finance_subscription_months GROUP BY 1, 2, 3) c
    JOIN window_months w USING (month)
    GROUP BY c.plan, c.currency
)
SELECT p.plan, round(p.arpa_monthly, 2), round(c.monthly_logo_churn, 6),
       CASE WHEN coalesce(c.monthly_logo_churn, 0) = 0 THEN NULL
            ELSE round(p.arpa_monthly / c.monthly_logo_churn, 2) END,
       p.currency
FROM per_plan p LEFT JOIN churn c USING (plan, currency)
$$;

CREATE VIEW finance_clv AS
SELECT plan, arpa_monthly, monthly_logo_churn, clv, currency
FROM tally_finance_clv(now());

DO $$
DECLARE
    v text;
BEGIN
    FOREACH v IN ARRAY ARRAY['finance_subscription_months',
        'finance_usage_monthly', 'finance_tenant_mrr', 'finance_mrr',
        'finance_arr', 'finance_churn', 'finance_revenue_by_plan',
        'finance_mrr_movements', 'finance_nrr', 'finance_clv']
    LOOP
        EXECUTE format('ALTER VIEW %I SET (security_invoker = true)', v);
        EXECUTE format('GRANT SELECT ON %I TO tally_finance', v);
    END LOOP;
END $$;
