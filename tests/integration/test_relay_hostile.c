/*
 * test_relay_hostile.c - tally-relay (the program, as a child process)
 * against clients that do not play by the rules, on loopback only: no
 * plausible signature (answered before the body is read), a body past
 * its deadline, the relay-wide body budget, relay.max_body against the
 * producer's message.max.bytes, and 2 000 slow connections held open
 * while signed webhooks keep getting their 200 and the relay's RSS stays
 * bounded. Slow clients bind their own loopback addresses (127.0.x.y),
 * so the per-address limit does not refuse them all; signed webhooks come
 * from 127.0.0.1.
 */
#define _DEFAULT_SOURCE
#include "check_main.h"
#include "program_support.h"
#include "test_support.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define SECRET "whsec_relay_hostile"
#define MAX_BODY_DEFAULT 983040
/* a header that passes the early check but matches no body */
#define PLAUSIBLE "t=1700000000,v1=" \
	"0000000000000000000000000000000000000000000000000000000000000000"

static const char *brokers;
static int seq;

typedef struct relay {
	pid_t pid;
	int port, admin;
	char cfg[128], log[128];
} relay;

/* --- the child ------------------------------------------------------------- */

static const char *bin_dir(void)
{
	const char *d = getenv("TALLY_BIN_DIR");

	return d && *d ? d : TALLY_BINARY_DIR;
}

static void write_cfg(relay *r, const char *extra)
{
	FILE *fp;

	snprintf(r->cfg, sizeof(r->cfg), "/tmp/tally_hostile_%d_%d.cfg",
		 (int)getpid(), seq);
	snprintf(r->log, sizeof(r->log), "/tmp/tally_hostile_%d_%d.log",
		 (int)getpid(), seq);
	fp = fopen(r->cfg, "w");
	ck_assert_ptr_nonnull(fp);
	fprintf(fp,
		"kafka: { brokers = \"%s\"; };\n"
		"topics: { stripe_events = \"test.relay_hostile.%d.%d\"; };\n"
		"relay: { listen = \"127.0.0.1:0\"; "
		"admin_listen = \"127.0.0.1:0\"; %s };\n",
		brokers, (int)getpid(), seq, extra ? extra : "");
	fclose(fp);
	seq++;
}

/* Run tally-relay on r->cfg, its log (stderr) to r->log. */
static void spawn(relay *r)
{
	char path[512];
	char *argv[] = { "tally-relay", "--config", r->cfg, "--create-topic",
			 "1", NULL };
	/* ASan's quarantine would hide what the relay frees */
	const char *set[] = { "STRIPE_WEBHOOK_SECRET=" SECRET,
			      "ASAN_OPTIONS=detect_leaks=0:quarantine_size_mb=8",
			      NULL };
	const char *unset[] = { "KAFKA_BROKERS",
				"STRIPE_WEBHOOK_SECRET_PREVIOUS", NULL };

	snprintf(path, sizeof(path), "%s/tally-relay", bin_dir());
	r->pid = prog_fork_exec(path, argv, r->log, O_TRUNC, set, unset);
}

static int json_int(const char *text, const char *key)
{
	const char *p = strstr(text, key);

	return p ? atoi(p + strlen(key)) : 0;
}

/* Start tally-relay with extra relay settings; wait for its ports. */
static void start(relay *r, const char *extra)
{
	int i;

	memset(r, 0, sizeof(*r));
	write_cfg(r, extra);
	spawn(r);
	for (i = 0; i < 300 && r->port == 0; i++) {
		char *text;
		FILE *fp = fopen(r->log, "r");
		const char *line;

		usleep(100000);
		if (fp == NULL)
			continue;
		text = calloc(1, 1 << 16);
		if (fread(text, 1, (1 << 16) - 1, fp) > 0 &&
		    (line = strstr(text, "\"relay.listening\"")) != NULL) {
			r->port = json_int(line, "\"port\":");
			r->admin = json_int(line, "\"admin_port\":");
		}
		free(text);
		fclose(fp);
		ck_assert_msg(waitpid(r->pid, NULL, WNOHANG) == 0,
			      "tally-relay exited at start (log %s)", r->log);
	}
	ck_assert_msg(r->port > 0 && r->admin > 0, "no ports in %s", r->log);
}

static void stop(relay *r)
{
	int status = 0;

	kill(r->pid, SIGTERM);
	waitpid(r->pid, &status, 0);
	unlink(r->cfg);
	unlink(r->log);
}

/* --- raw clients ------------------------------------------------------------- */

/* A connection to the relay from 127.0.a.b (a == 0: the default). */
static int dial(int port, int a, int b)
{
	struct sockaddr_in sa = { 0 };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
	if (a != 0) {
		sa.sin_family = AF_INET;
		sa.sin_addr.s_addr = htonl(0x7f000000u | (unsigned)a << 8 |
					   (unsigned)b);
		ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)),
				 0);
	}
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		      "connect: %s", strerror(errno));
	return fd;
}

/* Send what the socket takes now (a refused request may close it). */
static void put(int fd, const char *data, size_t n)
{
	(void)send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void put_headers(int fd, const char *sig, size_t clen)
{
	char h[1024];
	int n = snprintf(h, sizeof(h),
			 "POST /webhooks/stripe HTTP/1.1\r\nHost: relay\r\n"
			 "Content-Type: application/json\r\n"
			 "Content-Length: %zu\r\n%s%s%s\r\n",
			 clen, sig ? "Stripe-Signature: " : "", sig ? sig : "",
			 sig ? "\r\n" : "");

	put(fd, h, (size_t)n);
}

/* The status of the answer on fd within timeout_ms, 0 when none came,
 * -1 when the relay closed the connection without one. */
static int status_within(int fd, int timeout_ms)
{
	struct pollfd p = { fd, POLLIN, 0 };
	char buf[256];
	ssize_t n;

	if (poll(&p, 1, timeout_ms) != 1)
		return 0;
	n = recv(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return -1;
	if (n < 12)
		return 0;
	buf[n] = '\0';
	return strncmp(buf, "HTTP/1.1 ", 9) == 0 ? atoi(buf + 9) : 0;
}

/* --- signed webhooks (libcurl) ---------------------------------------------- */

static size_t sink(char *p, size_t sz, size_t nm, void *ud)
{
	(void)p;
	(void)ud;
	return sz * nm;
}

/* A signed event body of exactly len bytes (len >= 80); caller frees. */
static char *event_of(size_t len, int n)
{
	char *s = malloc(len + 1);
	int head = snprintf(s, len + 1, "{\"id\":\"evt_hostile_%d\",\"type\":"
			    "\"invoice.paid\",\"data\":{\"object\":{}},"
			    "\"pad\":\"", n);

	memset(s + head, 'a', len - (size_t)head - 2);
	memcpy(s + len - 2, "\"}", 3);
	return s;
}

/* POST a signed body; the status, and the time it took in *ms. */
static long post_signed(int port, const char *body, size_t len, int64_t *ms)
{
	char url[128], sig[TALLY_WEBHOOK_SIG_HEADER_MAX], h[160];
	struct curl_slist *hdrs = NULL;
	CURL *c = curl_easy_init();
	int64_t t0 = tally_now_ms();
	long code = 0;

	tally_webhook_sign(sig, sizeof(sig), body, len, SECRET,
			   tally_now_ms() / 1000);
	snprintf(h, sizeof(h), "Stripe-Signature: %s", sig);
	hdrs = curl_slist_append(hdrs, h);
	hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, "Expect:");
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/webhooks/stripe",
		 port);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	if (ms != NULL)
		*ms = tally_now_ms() - t0;
	curl_easy_cleanup(c);
	curl_slist_free_all(hdrs);
	return code;
}

static size_t collect(char *p, size_t sz, size_t nm, void *ud)
{
	char *out = ud;
	size_t len = strlen(out), n = sz * nm;

	if (len + n < 65535) {
		memcpy(out + len, p, n);
		out[len + n] = '\0';
	}
	return n;
}

/* Whether the admin listener's /metrics has this exact line. */
static bool metric_is(const relay *r, const char *line)
{
	char url[128], *text = calloc(1, 65536);
	CURL *c = curl_easy_init();
	bool found;

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", r->admin);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, text);
	ck_assert_int_eq(curl_easy_perform(c), CURLE_OK);
	curl_easy_cleanup(c);
	found = strstr(text, line) != NULL;
	free(text);
	return found;
}

/* --- tests ------------------------------------------------------------------- */

/* Without a plausible Stripe-Signature the answer comes before the body. */
START_TEST(test_hostile_unsigned_answered_before_body)
{
	relay r;
	int fd;

	start(&r, NULL);
	fd = dial(r.port, 0, 0);
	put_headers(fd, NULL, 500000);
	put(fd, "{\"id\":", 6);
	ck_assert_int_eq(status_within(fd, 3000), 400);
	close(fd);
	fd = dial(r.port, 0, 0);
	put_headers(fd, "t=1,v1=abc", 500000);
	ck_assert_int_eq(status_within(fd, 3000), 400);
	close(fd);
	stop(&r);
}
END_TEST

/* A body still incomplete after relay.body_timeout_ms: the connection is
 * closed (libmicrohttpd answers only whole requests), counted as 408. */
START_TEST(test_hostile_body_deadline)
{
	relay r;
	int fd;

	start(&r, "body_timeout_ms = 1000;");
	fd = dial(r.port, 0, 0);
	put_headers(fd, PLAUSIBLE, 1000);
	put(fd, "{\"id\":", 6);
	ck_assert_int_eq(status_within(fd, 600), 0);
	usleep(1200 * 1000);
	put(fd, "\"evt_", 5);
	ck_assert_int_eq(status_within(fd, 3000), -1);
	close(fd);
	ck_assert(metric_is(&r, "{status=\"408\",reason=\"body_timeout\"} 1\n"));
	stop(&r);
}
END_TEST

/* Past relay.max_buffered body bytes held relay-wide: closed, counted as
 * 503 busy; room again once the holder is gone. */
START_TEST(test_hostile_buffer_budget)
{
	relay r;
	char chunk[1000];
	int a, b;

	memset(chunk, ' ', sizeof(chunk));
	start(&r, "max_body = 1024; max_buffered = 1024;");
	a = dial(r.port, 0, 0);
	put_headers(a, PLAUSIBLE, 1024);
	put(a, chunk, sizeof(chunk));
	ck_assert_int_eq(status_within(a, 500), 0);
	b = dial(r.port, 0, 0);
	put_headers(b, PLAUSIBLE, 1024);
	put(b, chunk, 100);
	ck_assert_int_eq(status_within(b, 3000), -1);
	close(b);
	ck_assert(metric_is(&r, "{status=\"503\",reason=\"busy\"} 1\n"));
	close(a);
	usleep(300 * 1000);
	b = dial(r.port, 0, 0);
	put_headers(b, PLAUSIBLE, 100);
	put(b, chunk, 100);
	ck_assert_int_eq(status_within(b, 3000), 400); /* read, verified */
	close(b);
	stop(&r);
}
END_TEST

/* relay.max_body fits a record: a signed body of max_body bytes is
 * accepted, one byte more and a 1 MB event are 413 (never a 503). */
START_TEST(test_hostile_max_body_fits_kafka)
{
	relay r;
	char *ok = event_of(MAX_BODY_DEFAULT, 1);
	char *over = event_of(MAX_BODY_DEFAULT + 1, 2);
	char *mb = event_of(1000000, 3);

	start(&r, NULL);
	ck_assert_int_eq(post_signed(r.port, ok, MAX_BODY_DEFAULT, NULL), 200);
	ck_assert_int_eq(post_signed(r.port, over, MAX_BODY_DEFAULT + 1,
				     NULL), 413);
	ck_assert_int_eq(post_signed(r.port, mb, 1000000, NULL), 413);
	stop(&r);
	free(ok);
	free(over);
	free(mb);
}
END_TEST

/* A max_body that cannot fit message.max.bytes stops the relay at start. */
START_TEST(test_hostile_max_body_over_record_refused)
{
	relay r;
	char *text;
	FILE *fp;
	int status = 0, n;

	memset(&r, 0, sizeof(r));
	write_cfg(&r, "max_body = 1000000;");
	spawn(&r);
	waitpid(r.pid, &status, 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1,
		      "the relay must refuse to start (status %d)", status);
	fp = fopen(r.log, "r");
	ck_assert_ptr_nonnull(fp);
	text = calloc(1, 1 << 16);
	n = (int)fread(text, 1, (1 << 16) - 1, fp);
	fclose(fp);
	ck_assert_msg(n > 0 && strstr(text, "message.max.bytes") != NULL,
		      "the error names message.max.bytes: %s", text);
	free(text);
	unlink(r.cfg);
	unlink(r.log);
}
END_TEST

#define PARTIAL 1000 /* partial headers, then nothing */
#define TRICKLE 500  /* whole headers, then a byte a second */
#define BULKY 500    /* no signature, 256 KiB of body, then nothing */
#define SLOW (PARTIAL + TRICKLE + BULKY)
#define PER_ADDR 50  /* per-address limit is 64 */
#define BULK (256 * 1024)
#define ROUNDS 16    /* signed webhooks, one per 300 ms */
/*
 * RSS bound, measured on the Debug (ASan) build: the idle relay holds
 * about 25 MiB and grows by about 30 MiB with the 2 000 slow clients held;
 * a relay that reads the unsigned bodies grows by about 190 MiB.
 */
#define RSS_GROWTH_KIB (64 * 1024)

static void open_slow(int *fds, int port, char *bulk)
{
	char sig[200];
	int i;

	snprintf(sig, sizeof(sig), "t=%" PRId64 ",v1=%064d",
		 tally_now_ms() / 1000, 0);
	for (i = 0; i < SLOW; i++) {
		int addr = 1 + i / PER_ADDR;

		fds[i] = dial(port, 1 + addr / 250, addr % 250 + 1);
		if (i < PARTIAL) {
			put(fds[i], "POST /webhooks/stripe HTTP/1.1\r\nHost:", 37);
		} else if (i < PARTIAL + TRICKLE) {
			put_headers(fds[i], sig, 100000);
			put(fds[i], "{", 1);
		} else {
			put_headers(fds[i], NULL, 600000);
			put(fds[i], bulk, BULK);
		}
	}
}

START_TEST(test_hostile_2000_slow_connections)
{
	relay r;
	int *fds = calloc(SLOW, sizeof(int));
	char *bulk = malloc(BULK);
	long rss0, rss_max = 0;
	int i, k, slowest = 0;

	memset(bulk, ' ', BULK);
	start(&r, NULL);
	{ /* warm up: the first event creates the producer's state */
		char *ev = event_of(200, 0);

		ck_assert_int_eq(post_signed(r.port, ev, 200, NULL), 200);
		free(ev);
	}
	rss0 = tally_test_proc_kb(r.pid, "VmRSS:");
	open_slow(fds, r.port, bulk);
	for (k = 1; k <= ROUNDS; k++) {
		char *ev = event_of(400, k);
		int64_t ms = 0;
		long rss;

		for (i = PARTIAL; i < PARTIAL + TRICKLE; i++)
			put(fds[i], " ", 1);
		ck_assert_int_eq(post_signed(r.port, ev, 400, &ms), 200);
		if (ms > slowest)
			slowest = (int)ms;
		free(ev);
		rss = tally_test_proc_kb(r.pid, "VmRSS:");
		if (rss > rss_max)
			rss_max = rss;
		usleep(300 * 1000);
	}
	fprintf(stderr, "hostile: rss %ld KiB idle, %ld KiB max; slowest "
		"webhook %d ms\n", rss0, rss_max, slowest);
	ck_assert_msg(slowest < 1000, "a signed webhook took %d ms", slowest);
	ck_assert_msg(rss_max - rss0 < RSS_GROWTH_KIB,
		      "RSS grew by %ld KiB (bound %d KiB)", rss_max - rss0,
		      RSS_GROWTH_KIB);
	for (i = 0; i < SLOW; i++)
		close(fds[i]);
	stop(&r);
	free(fds);
	free(bulk);
}
END_TEST

static Suite *relay_hostile_suite(void)
{
	Suite *s = suite_create("relay_hostile");
	TCase *tc = tcase_create("Hostile");
	struct rlimit rl;

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test-relay-hostile", TALLY_WARN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	/* 2 000 client sockets here, as many in the relay (a child) */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 8192) {
		rl.rlim_cur = rl.rlim_max < 8192 ? rl.rlim_max : 8192;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_hostile_unsigned_answered_before_body);
	tcase_add_test(tc, test_hostile_body_deadline);
	tcase_add_test(tc, test_hostile_buffer_budget);
	tcase_add_test(tc, test_hostile_max_body_fits_kafka);
	tcase_add_test(tc, test_hostile_max_body_over_record_refused);
	tcase_add_test(tc, test_hostile_2000_slow_connections);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(relay_hostile_suite)
