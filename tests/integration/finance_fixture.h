#ifndef TALLY_TESTS_FINANCE_FIXTURE_H
#define TALLY_TESTS_FINANCE_FIXTURE_H

/*
 * finance_fixture.h - three tenants on the seed's plans, their
 * subscriptions (January to March 2026: one ends on 15 February, one is in
 * its trial until 5 March), usage, storage and adjustments, an invoice and
 * an alert: the data of test_finance.c and test_report_cli.c.
 */
static const char *const finance_fixture =
	"INSERT INTO tenants (id, name, slug, domain, subscription_plan) VALUES"
	" ('11111111-1111-1111-1111-111111111111','One','one','one.test','starter'),"
	" ('22222222-2222-2222-2222-222222222222','Two','two','two.test','professional'),"
	" ('33333333-3333-3333-3333-333333333333','Three','three','three.test','enterprise');"
	"INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, status,"
	" plan, stripe_created, as_of, trial_end, ended_at, canceled_at) VALUES"
	" ('11111111-1111-1111-1111-111111111111','sub_1','cus_1','active','starter',"
	"  '2026-01-10T00:00:00Z','2026-01-10T00:00:00Z',NULL,NULL,NULL),"
	" ('22222222-2222-2222-2222-222222222222','sub_2','cus_2','canceled','professional',"
	"  '2026-01-05T00:00:00Z','2026-02-15T00:00:00Z',NULL,'2026-02-15T00:00:00Z',"
	"  '2026-02-15T00:00:00Z'),"
	" ('33333333-3333-3333-3333-333333333333','sub_3','cus_3','active','enterprise',"
	"  '2026-02-20T00:00:00Z','2026-02-20T00:00:00Z','2026-03-05T00:00:00Z',NULL,NULL);"
	"INSERT INTO usage_hourly (tenant_id, hour, meter, provider, model, events,"
	" input_tokens, output_tokens, cost) VALUES"
	" ('11111111-1111-1111-1111-111111111111','2026-01-31T23:00:00Z','ai.tokens',"
	"  'openai','gpt-4o',3,300,30,1.25),"
	" ('11111111-1111-1111-1111-111111111111','2026-02-01T00:00:00Z','ai.tokens',"
	"  'openai','gpt-4o',1,1,0,0.000000000001),"
	" ('22222222-2222-2222-2222-222222222222','2026-02-10T05:00:00Z','ai.tokens',"
	"  'anthropic','claude-3-5-haiku',2,10,10,2.5),"
	/* a late event of January's closed period: at its own hour, as
	 * tally-aggregate writes it, and as the adjustment below */
	" ('11111111-1111-1111-1111-111111111111','2026-01-20T10:00:00Z','ai.tokens',"
	"  'openai','gpt-4o',1,100,10,0.75);"
	/* storage is charged per period, not in usage_hourly */
	"INSERT INTO tenant_period_usage (tenant_id, period_start, period_end,"
	" storage_cost, cost) VALUES"
	" ('11111111-1111-1111-1111-111111111111','2026-02-01T00:00:00Z',"
	"  '2026-03-01T00:00:00Z',0.5,0.5);"
	"INSERT INTO usage_adjustments (tenant_id, period_start, period_end, kind,"
	" meter, cost, created_at) VALUES"
	" ('11111111-1111-1111-1111-111111111111','2026-01-01T00:00:00Z',"
	"  '2026-02-01T00:00:00Z','late_usage','ai.tokens',0.75,'2026-03-02T00:00:00Z'),"
	" ('11111111-1111-1111-1111-111111111111','2026-01-01T00:00:00Z',"
	"  '2026-02-01T00:00:00Z','storage','storage.snapshot',0.1,"
	"  '2026-03-03T00:00:00Z');"
	"INSERT INTO invoices (tenant_id, invoice_id, customer_id, number,"
	" status, billing_reason, currency, amount_due, amount_paid,"
	" amount_remaining, total, period_start, period_end, stripe_created,"
	" as_of) VALUES ('11111111-1111-1111-1111-111111111111','in_1','cus_1',"
	" 'ONE-1','paid','subscription_cycle','USD',10110,10110,0,10110,"
	" '2026-01-10T00:00:00Z','2026-02-10T00:00:00Z','2026-02-10T00:00:00Z',"
	" '2026-02-10T00:00:00Z');"
	"INSERT INTO invoice_usage_lines (tenant_id, invoice_id, line_key,"
	" description, exact_amount, amount_minor, currency, status) VALUES"
	" ('11111111-1111-1111-1111-111111111111','in_1','usage:ai.tokens',"
	" 'AI tokens',2.1,210,'USD','created');"
	"INSERT INTO alerts (id, tenant_id, kind, period_start, threshold,"
	" raised_at) VALUES ('a1a1a1a1-0000-4000-8000-000000000001',"
	" '22222222-2222-2222-2222-222222222222','budget',"
	" '2026-02-01T00:00:00Z',80,'2026-02-12T09:30:00Z');";

#endif /* TALLY_TESTS_FINANCE_FIXTURE_H */
