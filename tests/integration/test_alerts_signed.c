/*
 * test_alerts_signed.c - signed webhook deliveries against a loopback
 * receiver (libmicrohttpd) and PostgreSQL: every POST carries a
 * Tally-Signature that an independent HMAC-SHA256 (OpenSSL HMAC) accepts,
 * with one v1 per secret during a rotation, and Tally-Delivery-Id = the
 * alert's id; the Python and Node receiver snippets of docs/alerts.md,
 * extracted from the file, verify a captured delivery and reject it with a
 * wrong secret or an altered body; without a secret nothing is POSTed.
 */
#include "alerts_webhook_support.h"

#include "tally/alerts.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <time.h>

#define TENANT AW_TENANT
#define NEW_SECRET "whsec_new_5f1c"
#define OLD_SECRET "whsec_old_9a2e"
#define DOCS TALLY_SOURCE_DIR "/docs/alerts.md"

static char db[64], dsn[512];
static tally_pg *pg;

/* what the receiver saw, one entry a request */
typedef struct seen {
	char sig[256];
	char delivery_id[64];
	char body[2048];
	size_t len;
} seen;

static struct {
	pthread_mutex_t mu;
	seen req[8];
	int n;
} rx = { PTHREAD_MUTEX_INITIALIZER, { { "", "", "", 0 } }, 0 };

static void db_setup(void)
{
	tally_error err;

	pg = aw_db_open(db, sizeof(db), dsn, sizeof(dsn), "t_alsig");
	ck_assert_int_eq(tally_pg_exec(pg, NULL,
		"INSERT INTO alerts (id, tenant_id, kind, period_start,"
		" threshold, payload) SELECT gen_random_uuid(), '" TENANT "',"
		" 'budget', '2026-12-01T00:00:00Z', t, '{\"cost\": \"81.5\"}'"
		" FROM unnest(ARRAY[50, 80]) t", 0, NULL, &err), 0);
	pthread_mutex_lock(&rx.mu);
	rx.n = 0;
	pthread_mutex_unlock(&rx.mu);
}

static void db_teardown(void)
{
	tally_pg_free(pg);
	pg = NULL;
	tally_test_db_drop(db);
}

static enum MHD_Result rx_handler(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *data,
				  size_t *data_size, void **con_cls)
{
	seen *b = *con_cls;
	struct MHD_Response *resp;
	const char *v;
	enum MHD_Result r;

	(void)cls;
	(void)url;
	(void)method;
	(void)version;
	if (b == NULL) {
		*con_cls = calloc(1, sizeof(seen));
		return MHD_YES;
	}
	if (*data_size > 0) {
		size_t n = *data_size;

		if (n > sizeof(b->body) - 1 - b->len)
			n = sizeof(b->body) - 1 - b->len;
		memcpy(b->body + b->len, data, n);
		b->len += n;
		*data_size = 0;
		return MHD_YES;
	}
	v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					"Tally-Signature");
	snprintf(b->sig, sizeof(b->sig), "%s", v ? v : "");
	v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					"Tally-Delivery-Id");
	snprintf(b->delivery_id, sizeof(b->delivery_id), "%s", v ? v : "");
	pthread_mutex_lock(&rx.mu);
	if (rx.n < 8)
		rx.req[rx.n++] = *b;
	pthread_mutex_unlock(&rx.mu);
	resp = MHD_create_response_from_buffer(0, (void *)"",
					       MHD_RESPMEM_PERSISTENT);
	r = MHD_queue_response(conn, 204, resp);
	MHD_destroy_response(resp);
	return r;
}

static void rx_done(void *cls, struct MHD_Connection *conn, void **con_cls,
		    enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

/* Receiver side, as the docs' snippets do it: does any v1 of sig match
 * HMAC-SHA256(secret, "<t>.<body>")? Also returns t. */
static bool sig_matches(const char *sig, const char *body, size_t len,
			const char *secret, int64_t *t_out)
{
	char buf[256], *save = NULL, *item, hex[65];
	unsigned char mac[EVP_MAX_MD_SIZE], *msg;
	unsigned maclen = 0, i;
	int64_t t = -1;
	bool ok = false;
	int tl;

	snprintf(buf, sizeof(buf), "%s", sig);
	for (item = strtok_r(buf, ",", &save); item != NULL;
	     item = strtok_r(NULL, ",", &save))
		if (strncmp(item, "t=", 2) == 0)
			t = strtoll(item + 2, NULL, 10);
	*t_out = t;
	if (t < 0)
		return false;
	msg = malloc(len + 32);
	tl = snprintf((char *)msg, 32, "%" PRId64 ".", t);
	memcpy(msg + tl, body, len);
	HMAC(EVP_sha256(), secret, (int)strlen(secret), msg,
	     (size_t)tl + len, mac, &maclen);
	free(msg);
	for (i = 0; i < maclen; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	snprintf(buf, sizeof(buf), "%s", sig);
	for (item = strtok_r(buf, ",", &save); item != NULL;
	     item = strtok_r(NULL, ",", &save))
		if (strncmp(item, "v1=", 3) == 0 && strcmp(item + 3, hex) == 0)
			ok = true;
	return ok;
}

static int count_v1(const char *sig)
{
	int n = 0;

	for (; (sig = strstr(sig, "v1=")) != NULL; sig += 3)
		n++;
	return n;
}

static int deliver(const char *url, const char *s0, const char *s1,
		   int *nd, tally_error *err)
{
	tally_pg *pg2 = NULL;
	tally_alerts_webhook wh = { url, { s0, s1 }, 2, 2000, 12, 86400 };
	int nf = -1, rc;

	ck_assert_int_eq(tally_pg_connect(&pg2, dsn, 5000, err), 0);
	rc = tally_alerts_deliver(pg2, &wh, 50, NULL, nd, &nf, err);
	tally_pg_free(pg2);
	return rc;
}

START_TEST(test_alerts_signed_rotation_verifies)
{
	struct MHD_Daemon *d;
	tally_error err;
	char url[128];
	int nd = -1, i;
	int64_t now = (int64_t)time(NULL), t;

	d = aw_rx_start(rx_handler, rx_done, url, sizeof(url));
	ck_assert_int_eq(deliver(url, NEW_SECRET, OLD_SECRET, &nd, &err), 0);
	ck_assert_int_eq(nd, 2);
	pthread_mutex_lock(&rx.mu);
	ck_assert_int_eq(rx.n, 2);
	for (i = 0; i < rx.n; i++) {
		seen *s = &rx.req[i];
		char q[160];
		PGresult *res = NULL;

		ck_assert_msg(count_v1(s->sig) == 2, "two v1 during a"
			      " rotation: %s", s->sig);
		ck_assert_msg(sig_matches(s->sig, s->body, s->len, NEW_SECRET,
					  &t), "new secret: %s", s->sig);
		ck_assert_msg(t >= now - 5 && t <= now + 60, "t=%" PRId64, t);
		ck_assert_msg(sig_matches(s->sig, s->body, s->len, OLD_SECRET,
					  &t), "old secret: %s", s->sig);
		ck_assert(!sig_matches(s->sig, s->body, s->len, "whsec_x",
				       &t));
		s->body[0] = ' '; /* one byte altered: no longer verifies */
		ck_assert(!sig_matches(s->sig, s->body, s->len, NEW_SECRET,
				       &t));
		ck_assert_msg(strstr(s->sig, NEW_SECRET) == NULL, "secret in"
			      " the header");
		snprintf(q, sizeof(q), "SELECT 1 FROM alerts WHERE id = '%s'",
			 s->delivery_id);
		ck_assert_int_eq(tally_pg_exec(pg, &res, q, 0, NULL, &err), 0);
		ck_assert_msg(PQntuples(res) == 1, "Tally-Delivery-Id is the"
			      " alert id: %s", s->delivery_id);
		PQclear(res);
	}
	pthread_mutex_unlock(&rx.mu);
	MHD_stop_daemon(d);
}
END_TEST

/* Write "<header>\n<body>" for a snippet driver; returns the path. */
static void capture(char *path, size_t n, const seen *s)
{
	FILE *f;
	int fd;

	snprintf(path, n, "/tmp/tally_alsig_XXXXXX");
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	f = fdopen(fd, "wb");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "%s\n", s->sig);
	fwrite(s->body, 1, s->len, f);
	fclose(f);
}

/* Run the docs' ```lang snippet with driver appended; its exit status. */
static int run_snippet(const char *lang, const char *interp,
		       const char *driver, const char *capfile,
		       const char *secret)
{
	char *doc = NULL, *start, *end, fence[32], script[64], cmd[512];
	size_t cap = 0;
	FILE *f = fopen(DOCS, "r");
	int fd, rc;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_gt(getdelim(&doc, &cap, '\0', f), 0);
	fclose(f);
	snprintf(fence, sizeof(fence), "```%s\n", lang);
	start = strstr(doc, fence);
	ck_assert_msg(start != NULL, "docs/alerts.md has a %s snippet", lang);
	start += strlen(fence);
	end = strstr(start, "```");
	ck_assert_ptr_nonnull(end);
	snprintf(script, sizeof(script), "/tmp/tally_alsig_snip_XXXXXX");
	fd = mkstemp(script);
	ck_assert_int_ge(fd, 0);
	f = fdopen(fd, "w");
	fwrite(start, 1, (size_t)(end - start), f);
	fputs(driver, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s %s %s %s", interp, script, capfile,
		 secret);
	rc = system(cmd);
	unlink(script);
	free(doc);
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static const char py_driver[] =
	"\nimport sys\n"
	"raw = open(sys.argv[1], 'rb').read()\n"
	"header, body = raw.split(b'\\n', 1)\n"
	"sys.exit(0 if verify(header.decode(), body, [sys.argv[2]]) else 1)\n";

static const char js_driver[] =
	"\nconst raw = require('fs').readFileSync(process.argv[2]);\n"
	"const nl = raw.indexOf(10);\n"
	"process.exit(verify(raw.subarray(0, nl).toString(),"
	" raw.subarray(nl + 1), [process.argv[3]]) ? 0 : 1);\n";

START_TEST(test_alerts_signed_docs_snippets)
{
	struct MHD_Daemon *d;
	tally_error err;
	char url[128], path[64];
	int nd = -1;
	seen s;

	d = aw_rx_start(rx_handler, rx_done, url, sizeof(url));
	ck_assert_int_eq(deliver(url, NEW_SECRET, NULL, &nd, &err), 0);
	ck_assert_int_eq(nd, 2);
	pthread_mutex_lock(&rx.mu);
	s = rx.req[0];
	pthread_mutex_unlock(&rx.mu);
	ck_assert_int_eq(count_v1(s.sig), 1);
	capture(path, sizeof(path), &s);
	ck_assert_int_eq(run_snippet("python", "python3", py_driver, path,
				     NEW_SECRET), 0);
	ck_assert_int_eq(run_snippet("python", "python3", py_driver, path,
				     OLD_SECRET), 1);
	ck_assert_int_eq(run_snippet("js", "node", js_driver, path,
				     NEW_SECRET), 0);
	ck_assert_int_eq(run_snippet("js", "node", js_driver, path,
				     OLD_SECRET), 1);
	unlink(path);
	s.body[s.len - 1] = s.body[s.len - 1] == '}' ? ' ' : '}';
	capture(path, sizeof(path), &s);
	ck_assert_int_eq(run_snippet("python", "python3", py_driver, path,
				     NEW_SECRET), 1);
	ck_assert_int_eq(run_snippet("js", "node", js_driver, path,
				     NEW_SECRET), 1);
	unlink(path);
	MHD_stop_daemon(d);
}
END_TEST

START_TEST(test_alerts_signed_never_unsigned)
{
	struct MHD_Daemon *d;
	tally_error err;
	char url[128];
	int nd = -1;

	d = aw_rx_start(rx_handler, rx_done, url, sizeof(url));
	ck_assert_int_eq(deliver(url, "", NULL, &nd, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "TALLY_ALERTS_WEBHOOK_SECRET") != NULL,
		      "%s", err.msg);
	ck_assert_int_eq(nd, 0);
	pthread_mutex_lock(&rx.mu);
	ck_assert_int_eq(rx.n, 0);
	pthread_mutex_unlock(&rx.mu);
	ck_assert_int_eq(aw_q_int(pg, "SELECT count(*) FROM alerts WHERE"
				  " delivery_attempts = 0 AND delivered_at IS"
				  " NULL"), 2);
	MHD_stop_daemon(d);
}
END_TEST

static Suite *tally_alerts_signed_suite(void)
{
	Suite *s = suite_create("alerts_signed");
	TCase *tc = tcase_create("Receiver");

	tcase_add_checked_fixture(tc, db_setup, db_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_alerts_signed_rotation_verifies);
	tcase_add_test(tc, test_alerts_signed_docs_snippets);
	tcase_add_test(tc, test_alerts_signed_never_unsigned);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_signed_suite)
