/*
 * test_tenant_export.c - `tally tenant export` on the real PostgreSQL:
 * every row of the tenant, in every table that holds tenant rows (found
 * by the test in the catalogue, independently of the exporter), and not
 * one row of another tenant; the manifest's counts and SHA-256 sums match
 * the files; a table added after the code (tied by a foreign key only) is
 * exported; and a million ledger rows export with a bounded peak memory.
 */
#include "tenant_data_support.h"
#include "check_main.h"

#include <jansson.h>
#include <openssl/evp.h>

static char dsn[512], dbname[64], reader_dsn[600], reader[64];
static td_person a, b;

static void setup(void)
{
	PGconn *c;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_unique(dbname, sizeof(dbname), "t_texport");
	tally_test_db_create(dsn, sizeof(dsn), dbname, 1);
	td_person_make(&a, "0a000000-0000-4000-8000-00000000000a", "alpha");
	td_person_make(&b, "0b000000-0000-4000-8000-00000000000b", "bravo");
	c = PQconnectdb(dsn);
	td_extra_table(c);
	td_seed(c, &a, 1, 5);
	td_seed(c, &b, 2, 7);
	PQfinish(c);
	/* exports run as a reader: a member of tally_finance (reads every
	 * table, the audit trail too, and writes nothing) */
	snprintf(reader, sizeof(reader), "tx_fin_%d", (int)getpid());
	td_login(reader_dsn, sizeof(reader_dsn), dsn, reader,
		 "tally_finance");
}

static void teardown(void)
{
	tally_test_db_drop(dbname);
	td_login_drop(reader);
}

/* The file's SHA-256 (hex), its line count and whether every line is a
 * JSON object owned by tenant (tenant_id, id or owner). */
static void check_file(const char *path, const char *tenant, char hexout[65],
		       long *lines)
{
	FILE *fp = fopen(path, "r");
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned dl = 0, i;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	ck_assert_msg(fp != NULL, "%s missing", path);
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	*lines = 0;
	while ((n = getline(&line, &cap, fp)) > 0) {
		json_error_t je;
		json_t *o;
		const char *owner;

		EVP_DigestUpdate(md, line, (size_t)n);
		o = json_loads(line, 0, &je);
		ck_assert_msg(json_is_object(o), "%s: not JSON: %s", path,
			      line);
		owner = json_string_value(json_object_get(o, "tenant_id"));
		if (owner == NULL)
			owner = json_string_value(json_object_get(o, "owner"));
		if (owner == NULL)
			owner = json_string_value(json_object_get(o, "id"));
		ck_assert_msg(owner != NULL && strcmp(owner, tenant) == 0,
			      "%s: a row of another tenant: %s", path, line);
		json_decref(o);
		(*lines)++;
	}
	free(line);
	fclose(fp);
	EVP_DigestFinal_ex(md, d, &dl);
	EVP_MD_CTX_free(md);
	for (i = 0; i < dl; i++)
		snprintf(hexout + 2 * i, 3, "%02x", d[i]);
}

/* Rows of tenant per table, counted by the test: every table of public
 * with tenant_id, tenants by id, tenant_contacts by owner. */
static json_t *expected_counts(PGconn *c, const char *tenant)
{
	json_t *m = json_object();
	PGresult *r = PQexec(c,
		"SELECT c.relname, format_type(a.atttypid, NULL)"
		"  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
		" WHERE c.relnamespace = 'public'::regnamespace"
		"   AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
		"   AND a.attname = 'tenant_id' AND NOT a.attisdropped");
	char sql[512];
	int i;

	ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	ck_assert_int_gt(PQntuples(r), 20);
	for (i = 0; i < PQntuples(r); i++) {
		char *v;

		snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE"
			 " tenant_id::text = '%s'", PQgetvalue(r, i, 0),
			 tenant);
		v = td_value(c, sql);
		json_object_set_new(m, PQgetvalue(r, i, 0),
				    json_integer(atoll(v)));
		free(v);
	}
	PQclear(r);
	json_object_set_new(m, "tenants", json_integer(1));
	json_object_set_new(m, "tenant_contacts", json_integer(1));
	return m;
}

START_TEST(test_export_every_row_of_the_tenant_only)
{
	char dir[256], path[512], hexs[65], *argv[8];
	char url[700];
	char *env[2] = { url, NULL };
	json_t *man, *files, *want, *f;
	json_error_t je;
	PGconn *c = PQconnectdb(dsn);
	const char *key;
	json_t *val;
	long lines, total = 0;
	size_t i;

	snprintf(url, sizeof(url), "DATABASE_URL=%s", reader_dsn);
	snprintf(dir, sizeof(dir), "/tmp/%s", dbname);
	argv[0] = path;
	snprintf(path, sizeof(path), "%s/tally", td_bin());
	argv[1] = "tenant";
	argv[2] = "export";
	argv[3] = a.slug;
	argv[4] = "--out";
	argv[5] = dir;
	argv[6] = NULL;
	ck_assert_int_eq(td_run(argv, env, NULL, NULL, NULL), 0);

	snprintf(path, sizeof(path), "%s/manifest.json", dir);
	man = json_load_file(path, 0, &je);
	ck_assert_msg(man != NULL, "manifest: %s", je.text);
	ck_assert_str_eq(json_string_value(json_object_get(man, "tenant_id")),
			 a.id);
	ck_assert_ptr_nonnull(json_string_value(json_object_get(man,
							"snapshot_at")));
	files = json_object_get(man, "files");
	/* finance reads every table: nothing left out */
	ck_assert_int_eq(json_array_size(json_object_get(man, "unreadable")),
			 0);
	want = expected_counts(c, a.id);
	/* every table the test knows of is in the manifest, with its rows */
	json_object_foreach(want, key, val) {
		bool found = false;

		json_array_foreach(files, i, f)
			if (strcmp(json_string_value(json_object_get(f,
						"table")), key) == 0) {
				found = true;
				ck_assert_msg(json_integer_value(json_object_get(
					f, "rows")) == json_integer_value(val),
					"%s: %lld rows, want %lld", key,
					json_integer_value(json_object_get(f,
						"rows")),
					json_integer_value(val));
			}
		ck_assert_msg(found, "table %s not exported", key);
	}
	/* each file: the manifest's rows and SHA-256, the tenant's rows only */
	json_array_foreach(files, i, f) {
		snprintf(path, sizeof(path), "%s/%s", dir, json_string_value(
				 json_object_get(f, "file")));
		check_file(path, a.id, hexs, &lines);
		ck_assert_int_eq(lines, json_integer_value(json_object_get(f,
								  "rows")));
		ck_assert_str_eq(hexs, json_string_value(json_object_get(f,
								"sha256")));
		total += lines;
		unlink(path);
	}
	ck_assert_int_eq(total, json_integer_value(json_object_get(man,
								   "rows")));
	/* what the seed wrote for a: 15 tables plus 5 ledger rows */
	ck_assert_int_ge(total, 20);
	ck_assert_int_eq(json_integer_value(json_object_get(want,
						"usage_ledger")), 5);
	json_decref(want);
	json_decref(man);
	snprintf(path, sizeof(path), "%s/manifest.json", dir);
	unlink(path);
	rmdir(dir);
	PQfinish(c);
}
END_TEST

/* A million ledger rows: the export streams, its peak memory stays far
 * below the size of the data (about 200 MB of JSON). */
START_TEST(test_export_million_rows_bounded_memory)
{
	char dir[256], path[512], errp[300], url[700], *argv[7], *log;
	char asan[512];
	char *env[3] = { url, asan, NULL };
	PGconn *c = PQconnectdb(dsn);
	json_t *man, *f;
	json_error_t je;
	long rss = 0;
	size_t i;
	int64_t ledger = -1;

	td_exec(c, "INSERT INTO usage_ledger (occurred_at, quantity,"
		   " input_tokens, output_tokens, cache_read_tokens, tenant_id,"
		   " digest, meter_id, model_id, provider_id, cost)"
		   " SELECT now() - interval '2 hours', 1, g, 2 * g, g % 7,"
		   " '0b000000-0000-4000-8000-00000000000b', gen_random_uuid(),"
		   " 1, NULL, NULL, 0.000001 * g"
		   " FROM generate_series(1, 1000000) g");
	PQfinish(c);
	snprintf(url, sizeof(url), "DATABASE_URL=%s", reader_dsn);
	/* ASan holds freed blocks in a quarantine (256 MB by default) that
	 * would count as the export's memory: keep it small */
	snprintf(asan, sizeof(asan), "ASAN_OPTIONS=%s%squarantine_size_mb=8",
		 getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "",
		 getenv("ASAN_OPTIONS") ? ":" : "");
	snprintf(dir, sizeof(dir), "/tmp/%s_big", dbname);
	snprintf(errp, sizeof(errp), "/tmp/%s_big.err", dbname);
	snprintf(path, sizeof(path), "%s/tally", td_bin());
	argv[0] = path;
	argv[1] = "tenant";
	argv[2] = "export";
	argv[3] = b.id;
	argv[4] = "--out";
	argv[5] = dir;
	argv[6] = NULL;
	ck_assert_int_eq(td_run(argv, env, NULL, errp, &rss), 0);
	fprintf(stderr, "export of 1000007 ledger rows: peak RSS %ld KiB\n",
		rss);
	/* bounded: the whole result in memory takes several hundred MB */
	ck_assert_msg(rss < 100 * 1024, "peak RSS %ld KiB", rss);
	log = td_slurp(errp);
	ck_assert_msg(strstr(log, "export: usage_ledger: 1000000 rows") != NULL,
		      "progress: %s", log);
	free(log);
	snprintf(path, sizeof(path), "%s/manifest.json", dir);
	man = json_load_file(path, 0, &je);
	ck_assert_ptr_nonnull(man);
	json_array_foreach(json_object_get(man, "files"), i, f) {
		char p2[600];

		if (strcmp(json_string_value(json_object_get(f, "table")),
			   "usage_ledger") == 0)
			ledger = json_integer_value(json_object_get(f, "rows"));
		snprintf(p2, sizeof(p2), "%s/%s", dir, json_string_value(
				 json_object_get(f, "file")));
		unlink(p2);
	}
	ck_assert_int_eq(ledger, 1000007);
	json_decref(man);
	unlink(path);
	unlink(errp);
	rmdir(dir);
}
END_TEST

START_TEST(test_export_unknown_tenant)
{
	char path[512], url[700], *argv[7];
	char *env[2] = { url, NULL };

	snprintf(url, sizeof(url), "DATABASE_URL=%s", reader_dsn);
	snprintf(path, sizeof(path), "%s/tally", td_bin());
	argv[0] = path;
	argv[1] = "tenant";
	argv[2] = "export";
	argv[3] = "no-such-tenant'; DROP TABLE tenants; --";
	argv[4] = "--out";
	argv[5] = "/tmp/tally_export_none";
	argv[6] = NULL;
	ck_assert_int_eq(td_run(argv, env, NULL, NULL, NULL), 1);
	rmdir("/tmp/tally_export_none");
}
END_TEST

static Suite *tenant_export_suite(void)
{
	Suite *s = suite_create("tenant_export");
	TCase *tc = tcase_create("export");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_export_every_row_of_the_tenant_only);
	tcase_add_test(tc, test_export_unknown_tenant);
	tcase_add_test(tc, test_export_million_rows_bounded_memory);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tenant_export_suite)
