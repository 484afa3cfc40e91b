-- 0005_finance.sql: the finance views (DESIGN.md §5), read-only role
-- tally_finance. All amounts are numeric in the currency unit (Stripe's
-- minor-unit integers are divided by 10^minor_digits of their currency).
-- Months are calendar months in UTC, half-open [month, month + 1 month),
-- whatever the session's TimeZone (every timestamp -> timestamptz
-- conversion says AT TIME ZONE 'UTC').
--
-- Definitions (the same everywhere):
-- * A subscription is live in month M when it started before M ends
--   (stripe_created < end of M), has not ended before M starts
--   (coalesce(ended_at, canceled_at) is NULL or >= start of M), and is not
--   incomplete. It pays in M when it is live and not in a trial that covers
--   the whole of M (trial_end < end of M or no trial).
-- * plan MRR of M: the sum of plans.monthly_price of the subscriptions paying
--   in M (at their plan as mirrored now; plan history is in Stripe events).
-- * usage revenue of M: cost of usage whose event time lies in M
--   (usage_hourly), plus adjustments created in M for closed periods.
-- * MRR (usage-inclusive) = plan MRR + usage revenue; ARR = 12 × MRR.
-- * logo churn of M: subscriptions that ended in M / subscriptions live at
--   the start of M. Revenue churn: their plan MRR / plan MRR at the start.
-- * CLV per plan: average monthly revenue per paying account over the last
--   12 complete months / average monthly logo churn over those months
--   (NULL while churn is 0: an unbounded lifetime is not a number).

CREATE TABLE currencies (
    code          char(3) PRIMARY KEY,
    minor_digits  smallint NOT NULL CHECK (minor_digits BETWEEN 0 AND 4)
);
-- Stripe's zero-decimal and three-decimal currencies, and the common ones.
INSERT INTO currencies VALUES
 ('USD',2),('EUR',2),('GBP',2),('CAD',2),('AUD',2),('CHF',2),('SEK',2),
 ('NOK',2),('DKK',2),('PLN',2),('INR',2),('BRL',2),('MXN',2),('SGD',2),
 ('HKD',2),('NZD',2),('ZAR',2),('CNY',2),
 ('JPY',0),('KRW',0),('VND',0),('CLP',0),('ISK',0),('XOF',0),('XAF',0),
 ('UGX',0),('PYG',0),('RWF',0),('BIF',0),('DJF',0),('GNF',0),('KMF',0),
 ('MGA',0),('VUV',0),('XPF',0),
 ('BHD',3),('JOD',3),('KWD',3),('OMR',3),('TND',3);

-- Stripe minor units -> currency units, exactly (numeric division by 10^n).
CREATE FUNCTION tally_from_minor(amount numeric, currency text)
RETURNS numeric LANGUAGE sql IMMUTABLE AS
$$ SELECT amount / (10::numeric ^ coalesce(
       (SELECT minor_digits FROM currencies WHERE code = upper(currency)), 2)) $$;

CREATE VIEW finance_months AS
SELECT m AT TIME ZONE 'UTC' AS month,
       (m + interval '1 month') AT TIME ZONE 'UTC' AS month_end
FROM generate_series(
    date_trunc('month', least(
        coalesce((SELECT min(stripe_created) FROM subscriptions), now()),
        coalesce((SELECT min(hour) FROM usage_hourly), now())) AT TIME ZONE 'UTC'),
    date_trunc('month', now() AT TIME ZONE 'UTC'),
    interval '1 month') AS m;

CREATE VIEW finance_subscription_months AS
SELECT fm.month, s.tenant_id, s.subscription_id, s.plan,
       coalesce(p.monthly_price, 0) AS plan_price,
       (s.stripe_created < fm.month) AS live_at_start,
       (coalesce(s.ended_at, s.canceled_at) >= fm.month
        AND coalesce(s.ended_at, s.canceled_at) < fm.month_end) AS ended_in_month,
       (s.trial_end IS NULL OR s.trial_end < fm.month_end) AS paying
FROM finance_months fm
JOIN subscriptions s
  ON s.stripe_created < fm.month_end
 AND (coalesce(s.ended_at, s.canceled_at) IS NULL
      OR coalesce(s.ended_at, s.canceled_at) >= fm.month)
 AND s.status NOT IN ('incomplete', 'incomplete_expired')
LEFT JOIN plans p ON p.id = s.plan;

CREATE VIEW finance_usage_monthly AS
SELECT date_trunc('month', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month,
       tenant_id, sum(cost) AS usage_revenue
FROM usage_hourly
GROUP BY 1, 2
UNION ALL
SELECT date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       tenant_id, sum(cost)
FROM usage_adjustments
GROUP BY 1, 2;

CREATE VIEW finance_mrr AS
SELECT fm.month,
       coalesce(sub.plan_mrr, 0) AS plan_mrr,
       coalesce(u.usage_revenue, 0) AS usage_revenue,
       coalesce(sub.plan_mrr, 0) + coalesce(u.usage_revenue, 0) AS mrr,
       coalesce(sub.paying_subscriptions, 0) AS paying_subscriptions
FROM finance_months fm
LEFT JOIN (SELECT month, sum(plan_price) FILTER (WHERE paying) AS plan_mrr,
                  count(*) FILTER (WHERE paying) AS paying_subscriptions
           FROM finance_subscription_months GROUP BY month) sub
       ON sub.month = fm.month
LEFT JOIN (SELECT month, sum(usage_revenue) AS usage_revenue
           FROM finance_usage_monthly GROUP BY month) u
       ON u.month = fm.month;

CREATE VIEW finance_arr AS
SELECT month, plan_mrr * 12 AS plan_arr, mrr * 12 AS arr
FROM finance_mrr;

CREATE VIEW finance_churn AS
SELECT month,
       count(*) FILTER (WHERE live_at_start) AS subscriptions_at_start,
       count(*) FILTER (WHERE ended_in_month) AS churned_subscriptions,
       CASE WHEN count(*) FILTER (WHERE live_at_start) = 0 THEN NULL
            ELSE round(count(*) FILTER (WHERE ended_in_month)::numeric
                       / count(*) FILTER (WHERE live_at_start), 6) END
           AS logo_churn_rate,
       coalesce(sum(plan_price) FILTER (WHERE live_at_start), 0) AS plan_mrr_at_start,
       coalesce(sum(plan_price) FILTER (WHERE ended_in_month), 0) AS churned_plan_mrr,
       CASE WHEN coalesce(sum(plan_price) FILTER (WHERE live_at_start), 0) = 0
            THEN NULL
            ELSE round(coalesce(sum(plan_price) FILTER (WHERE ended_in_month), 0)
                       / sum(plan_price) FILTER (WHERE live_at_start), 6) END
           AS revenue_churn_rate
FROM finance_subscription_months
GROUP BY month;

CREATE VIEW finance_revenue_by_plan AS
SELECT sm.month, sm.plan,
       count(*) FILTER (WHERE sm.paying) AS paying_subscriptions,
       coalesce(sum(sm.plan_price) FILTER (WHERE sm.paying), 0) AS plan_revenue,
       coalesce(sum(u.usage_revenue), 0) AS usage_revenue
FROM finance_subscription_months sm
LEFT JOIN (SELECT month, tenant_id, sum(usage_revenue) AS usage_revenue
           FROM finance_usage_monthly GROUP BY 1, 2) u
       ON u.month = sm.month AND u.tenant_id = sm.tenant_id
GROUP BY sm.month, sm.plan;

CREATE VIEW finance_usage_cost_daily AS
SELECT date_trunc('day', h.hour AT TIME ZONE 'UTC')::date AS day,
       h.tenant_id, t.slug AS tenant, h.meter, h.provider, h.model,
       sum(h.events) AS events,
       sum(h.input_tokens) AS input_tokens,
       sum(h.output_tokens) AS output_tokens,
       sum(h.cache_read_tokens) AS cache_read_tokens,
       sum(h.cache_write_tokens) AS cache_write_tokens,
       sum(h.cost) AS cost
FROM usage_hourly h
LEFT JOIN tenants t ON t.id = h.tenant_id
GROUP BY 1, 2, 3, 4, 5, 6;

CREATE VIEW finance_clv AS
WITH window_months AS (
    SELECT month FROM finance_months
    WHERE month >= (date_trunc('month', now() AT TIME ZONE 'UTC')
                    - interval '12 months') AT TIME ZONE 'UTC'
      AND month <  date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
), per_plan AS (
    SELECT r.plan,
           avg(CASE WHEN r.paying_subscriptions = 0 THEN NULL
                    ELSE (r.plan_revenue + r.usage_revenue) / r.paying_subscriptions END)
               AS arpa_monthly
    FROM finance_revenue_by_plan r JOIN window_months w USING (month)
    GROUP BY r.plan
), churn AS (
    SELECT sm.plan,
           avg(CASE WHEN c.live = 0 THEN NULL ELSE c.ended::numeric / c.live END)
               AS monthly_logo_churn
    FROM (SELECT month, plan,
                 count(*) FILTER (WHERE live_at_start) AS live,
                 count(*) FILTER (WHERE ended_in_month) AS ended
          FROM finance_subscription_months GROUP BY 1, 2) c
    JOIN window_months w USING (month)
    JOIN (SELECT DISTINCT plan FROM finance_subscription_months) sm USING (plan)
    GROUP BY sm.plan
)
SELECT p.plan, round(p.arpa_monthly, 2) AS arpa_monthly,
       round(c.monthly_logo_churn, 6) AS monthly_logo_churn,
       CASE WHEN coalesce(c.monthly_logo_churn, 0) = 0 THEN NULL
            ELSE round(p.arpa_monthly / c.monthly_logo_churn, 2) END AS clv
FROM per_plan p LEFT JOIN churn c USING (plan);

GRANT SELECT ON currencies, finance_months, finance_subscription_months,
    finance_usage_monthly, finance_mrr, finance_arr, finance_churn,
    finance_revenue_by_plan, finance_usage_cost_daily, finance_clv
    TO tally_finance;
