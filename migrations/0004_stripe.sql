-- 0004_stripe.sql: the Stripe side of billing (issue 6).
--
-- * billing_commands: every command received on billing.commands, its Stripe
--   idempotency key, status and result or Stripe's error.
-- * stripe_requests: every POST sent to Stripe with its Idempotency-Key and
--   the id of the object it created, so a replay days later (Stripe keeps
--   keys about 24 h) looks the object up instead of creating it again.
-- * subscriptions, invoices, invoice_lines, payments: mirrors of Stripe
--   objects keyed by Stripe id. Stripe does not order webhook events, so each
--   row carries the version it was written from: as_of (the Stripe event's
--   `created`, or the instant the object was fetched from the API) plus a
--   tie-break rank for events of the same second. A write with an older
--   (as_of, as_of_rank) never replaces a newer one.
-- * stripe_events: processed event ids (dedupe) with their outcome.
-- * tenant_status_transitions: dunning and subscription status changes,
--   each recorded (and signalled) once.
-- * billing_signals_outbox: signals for billing.signals written in the same
--   transaction as the state they announce; tally-stripe publishes and marks
--   them (transactional outbox), so a crash never loses or invents one.
-- * stripe_meter_reports: usage reported to Stripe meters per tenant, meter,
--   hour and revision (late usage is sent as a delta revision).
--
-- Amounts are Stripe integers in the currency's minor unit, stored as
-- numeric; Stripe times are timestamptz.

CREATE TABLE billing_commands (
    tenant_id          uuid NOT NULL,
    command_id         text NOT NULL,
    type               text NOT NULL CHECK (type IN ('create_customer',
                           'create_subscription','change_plan',
                           'cancel_subscription','sync_tenant')),
    idempotency_key    text NOT NULL,   -- base; each POST adds ":<step>"
    payload            jsonb NOT NULL DEFAULT '{}',
    command_time       timestamptz,
    status             text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending','succeeded','failed')),
    attempts           integer NOT NULL DEFAULT 0,
    stripe_object_id   text,            -- subscription/customer acted on
    result             jsonb,
    error_type         text,            -- Stripe error object, when rejected
    error_code         text,
    error_message      text,
    error_param        text,
    http_status        integer,
    stripe_request_id  text,
    received_at        timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    PRIMARY KEY (tenant_id, command_id),
    UNIQUE (tenant_id, idempotency_key)
);

CREATE TABLE stripe_requests (
    tenant_id          uuid NOT NULL,
    idempotency_key    text NOT NULL,
    command_id         text,
    method             text NOT NULL,
    path               text NOT NULL,
    object_id          text,            -- id of the object the POST returned
    http_status        integer,
    stripe_request_id  text,
    first_sent_at      timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    PRIMARY KEY (tenant_id, idempotency_key)
);

CREATE TABLE subscriptions (
    tenant_id              uuid NOT NULL,
    subscription_id        text NOT NULL,
    customer_id            text NOT NULL,
    status                 text NOT NULL,
    plan                   text,            -- plans.id mapped from the price
    price_id               text,
    item_id                text,
    quantity               bigint,
    currency               char(3),
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    trial_start            timestamptz,
    trial_end              timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    cancel_at              timestamptz,
    canceled_at            timestamptz,
    ended_at               timestamptz,
    stripe_created         timestamptz NOT NULL,
    as_of                  timestamptz NOT NULL,  -- Stripe time of this version
    as_of_rank             smallint NOT NULL DEFAULT 0,
    last_event_id          text,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subscription_id)
);
CREATE UNIQUE INDEX subscriptions_id ON subscriptions (subscription_id, tenant_id);

CREATE TABLE invoices (
    tenant_id              uuid NOT NULL,
    invoice_id             text NOT NULL,
    customer_id            text NOT NULL,
    subscription_id        text,
    number                 text,
    status                 text,            -- draft|open|paid|void|uncollectible
    billing_reason         text,
    currency               char(3) NOT NULL,
    amount_due             numeric NOT NULL,
    amount_paid            numeric NOT NULL,
    amount_remaining       numeric NOT NULL,
    subtotal               numeric,
    total                  numeric,
    attempt_count          integer NOT NULL DEFAULT 0,
    period_start           timestamptz,
    period_end             timestamptz,
    due_date               timestamptz,
    next_payment_attempt   timestamptz,
    paid_at                timestamptz,
    payment_failed_at      timestamptz,   -- last invoice.payment_failed
    stripe_created         timestamptz NOT NULL,
    as_of                  timestamptz NOT NULL,
    as_of_rank             smallint NOT NULL DEFAULT 0,
    last_event_id          text,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, invoice_id)
);
CREATE UNIQUE INDEX invoices_id ON invoices (invoice_id, tenant_id);

-- Replaced as a whole whenever a newer version of the invoice is mirrored.
CREATE TABLE invoice_lines (
    tenant_id              uuid NOT NULL,
    invoice_id             text NOT NULL,
    line_id                text NOT NULL,
    amount                 numeric NOT NULL,
    currency               char(3) NOT NULL,
    description            text,
    quantity               bigint,
    price_id               text,
    subscription_id        text,
    proration              boolean NOT NULL DEFAULT false,
    period_start           timestamptz,
    period_end             timestamptz,
    PRIMARY KEY (tenant_id, invoice_id, line_id)
);

-- payment intents, charges and disputes (object says which).
CREATE TABLE payments (
    tenant_id              uuid NOT NULL,
    stripe_id              text NOT NULL,     -- pi_…, ch_… or dp_…
    object                 text NOT NULL
        CHECK (object IN ('payment_intent','charge','dispute')),
    customer_id            text,
    invoice_id             text,
    payment_intent_id      text,
    charge_id              text,
    status                 text NOT NULL,
    amount                 numeric NOT NULL,
    amount_received        numeric,
    amount_refunded        numeric,
    currency               char(3) NOT NULL,
    failure_code           text,
    failure_message        text,
    dispute_reason         text,
    stripe_created         timestamptz NOT NULL,
    as_of                  timestamptz NOT NULL,
    as_of_rank             smallint NOT NULL DEFAULT 0,
    last_event_id          text,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, stripe_id)
);
CREATE UNIQUE INDEX payments_id ON payments (stripe_id, tenant_id);

-- Not tenant-keyed: an event may name a customer tally does not know.
CREATE TABLE stripe_events (
    event_id        text PRIMARY KEY,
    type            text NOT NULL,
    tenant_id       uuid,
    object_id       text,
    event_created   timestamptz NOT NULL,
    outcome         text NOT NULL,   -- applied|stale|ignored|unknown_tenant|
                                     -- bad_signature|invalid
    detail          text,
    processed_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_status_transitions (
    tenant_id       uuid NOT NULL,
    id              bigint GENERATED ALWAYS AS IDENTITY,
    from_status     text NOT NULL,
    to_status       text NOT NULL,
    reason          text NOT NULL,   -- payment_failed|auto_suspend|paid|
                                     -- subscription|command|...
    cause           text NOT NULL,   -- event id, command id or dunning key
    stripe_time     timestamptz,
    transitioned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, cause, to_status)
);

CREATE TABLE billing_signals_outbox (
    tenant_id       uuid NOT NULL,
    signal_id       uuid NOT NULL,   -- stable: receivers dedupe on it
    kind            text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    PRIMARY KEY (tenant_id, signal_id)
);
CREATE INDEX billing_signals_unpublished ON billing_signals_outbox (created_at)
    WHERE published_at IS NULL;

CREATE TABLE stripe_meter_reports (
    tenant_id       uuid NOT NULL,
    meter           text NOT NULL,
    hour            timestamptz NOT NULL,
    revision        integer NOT NULL,   -- 0 first report, then late deltas
    event_name      text NOT NULL,
    identifier      text NOT NULL,      -- Stripe meter event identifier
    customer_id     text NOT NULL,
    value           numeric NOT NULL,   -- sent in this revision
    cumulative      numeric NOT NULL,   -- total reported for the hour so far
    status          text NOT NULL CHECK (status IN ('pending','reported',
                        'failed','outside_window')),
    error_code      text,
    error_message   text,
    reported_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, meter, hour, revision),
    UNIQUE (identifier)
);

GRANT SELECT ON billing_commands, subscriptions, invoices, invoice_lines,
    payments, stripe_events, tenant_status_transitions, stripe_meter_reports
    TO tally_finance;

ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
CREATE POLICY invoices_tenant ON invoices FOR SELECT TO tally_tenant
    USING (tenant_id = tally_current_tenant());
ALTER TABLE invoice_lines ENABLE ROW LEVEL SECURITY;
CREATE POLICY invoice_lines_tenant ON invoice_lines FOR SELECT TO tally_tenant
    USING (tenant_id = tally_current_tenant());
ALTER TABLE subscriptions ENABLE ROW LEVEL SECURITY;
CREATE POLICY subscriptions_tenant ON subscriptions FOR SELECT TO tally_tenant
    USING (tenant_id = tally_current_tenant());
GRANT SELECT ON invoices, invoice_lines, subscriptions TO tally_tenant;
