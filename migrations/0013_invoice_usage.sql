-- 0013: usage charges on the tenant's Stripe invoice (docs/stripe.md,
-- "Usage on the invoice").
--
-- When Stripe drafts a subscription_cycle invoice, tally closes the usage
-- period it bills, computes the period's charges (usage by meter and
-- model, storage, every adjustment not yet invoiced) and adds them as
-- invoice items. Each line is recorded here before the Stripe call
-- (pending) and after it (created, with the item id), so a redelivered
-- webhook or a crash between two items leaves one item per line.

-- Usage included in the plan's price, deducted before charging (currency
-- units, exact; NULL = none). Stripe product/price made by
-- `tally stripe setup`; stripe.price_<plan> / STRIPE_PRICE_ID_<PLAN> win.
ALTER TABLE plans
    ADD COLUMN included_usage    numeric CHECK (included_usage >= 0),
    ADD COLUMN stripe_product_id text,
    ADD COLUMN stripe_price_id   text;

-- One computation per (tenant, invoice): the lines below were computed in
-- the transaction that wrote this row, and are never recomputed.
CREATE TABLE invoice_usage_runs (
    tenant_id     uuid NOT NULL,
    invoice_id    text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    currency      char(3) NOT NULL,
    grouping      text NOT NULL,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, invoice_id)
);

CREATE TABLE invoice_usage_lines (
    tenant_id        uuid NOT NULL,
    invoice_id       text NOT NULL,     -- the invoice the line was computed for
    line_key         text NOT NULL,     -- usage:<meter>:<provider>:<model>, ...
    description      text NOT NULL,
    exact_amount     numeric NOT NULL,  -- currency units, exact
    amount_minor     bigint NOT NULL,   -- rounded once, half away from zero
    currency         char(3) NOT NULL,
    -- pending: recorded, not yet on Stripe; created: item on the invoice;
    -- pending_item: item waiting for the next invoice (the draft was
    -- finalized first); zero: rounds to 0, nothing sent
    status           text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'created', 'pending_item', 'zero')),
    stripe_item_id   text,
    attached_invoice text,              -- NULL for a pending invoice item
    attempts         integer NOT NULL DEFAULT 0,
    -- sent again by reconcile --apply (the item was deleted on Stripe):
    -- part of the Idempotency-Key, so Stripe does not answer the old item
    resends          integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, invoice_id, line_key)
);

-- Finance: per invoice, the plan, tally's usage (exact and rounded) and
-- what Stripe says. difference = Stripe's total - (plan + usage rounded):
-- non-zero means an item is missing or Stripe added something (tax,
-- proration, credit).
CREATE VIEW finance_invoices AS
SELECT i.tenant_id, i.invoice_id, i.status, i.currency, i.period_start,
       i.period_end, i.billing_reason,
       coalesce(p.monthly_price, 0) AS plan_amount,
       coalesce(u.exact, 0) AS usage_exact,
       round(coalesce(tally_from_minor(u.minor, i.currency), 0), c.d)
         AS usage_rounded,
       round(tally_from_minor(i.amount_due, i.currency), c.d) AS amount_due,
       round(tally_from_minor(i.amount_paid, i.currency), c.d) AS amount_paid,
       round(tally_from_minor(coalesce(i.total, i.amount_due), i.currency)
         - coalesce(p.monthly_price, 0)
         - coalesce(tally_from_minor(u.minor, i.currency), 0), c.d)
         AS difference
FROM invoices i
CROSS JOIN LATERAL (
    SELECT coalesce((SELECT minor_digits FROM currencies
                     WHERE code = upper(i.currency)), 2)::int AS d
) c
LEFT JOIN tenants t ON t.id = i.tenant_id
LEFT JOIN plans p ON p.id = t.subscription_plan
LEFT JOIN LATERAL (
    SELECT sum(l.exact_amount) AS exact, sum(l.amount_minor) AS minor
    FROM invoice_usage_lines l
    WHERE l.tenant_id = i.tenant_id AND l.invoice_id = i.invoice_id
) u ON true;

GRANT SELECT ON invoice_usage_runs, invoice_usage_lines, finance_invoices
    TO tally_finance;
ALTER TABLE invoice_usage_lines ENABLE ROW LEVEL SECURITY;
CREATE POLICY invoice_usage_lines_tenant ON invoice_usage_lines FOR SELECT
    TO tally_tenant USING (tenant_id = tally_current_tenant());
GRANT SELECT ON invoice_usage_lines TO tally_tenant;
