-- 0016: a usage run that billed nothing because the invoice is not in the
-- tenant's billing currency (docs/stripe.md, "Usage on the invoice").
--
-- tally converts no currency: the usage of a tenant is priced in its
-- tenants.currency, so an invoice in another currency gets no usage line.
-- Such a run is recorded without lines (status currency_mismatch), nothing
-- taken from the period; `tally stripe reconcile` reports it, and --apply
-- computes and sends its lines once the tenant's currency is the invoice's.
ALTER TABLE invoice_usage_runs
    ADD COLUMN status text NOT NULL DEFAULT 'computed'
        CHECK (status IN ('computed', 'currency_mismatch'));
