/*
 * backfill.c - JSON lines to a topic in parallel (tally/backfill.h). The
 * calling thread reads the input into chunks of about 1 MiB, each ending
 * at a line boundary and knowing the number of its first line, and queues
 * them; parser threads take a chunk each, decode its lines
 * (tally_codec_from_json_line: no allocation for plain events), encode and
 * send them with their own msgpack buffer (send_event; commands through
 * tally_producer_send_command_sb), and
 * give the chunk back to a pool. Nothing is allocated per line; the
 * chunks are reused. A line is in exactly one chunk, so it is sent once or
 * rejected once, whatever the order the threads finish in.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/backfill.h"

#include <errno.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally/codec.h"
#include "tally/command.h"
#include "tally/event.h"

#define CHUNK_BYTES (1u << 20)
#define MAX_THREADS 64

typedef struct chunk {
	char *buf;
	size_t len, cap;
	uint64_t first_line;
	struct chunk *next;
} chunk;

typedef struct backfill {
	const tally_backfill_opts *o;
	pthread_mutex_t mu;
	pthread_cond_t more, room, gone;
	chunk *head, *tail, *pool;
	size_t queued, max_queued;
	int running;           /* parser threads not finished */
	bool eof, stop;
	int stop_rc;
	tally_error stop_err;
	uint64_t done_lines, produced, rejected, reported; /* atomics */
	int64_t t0, last_report;
} backfill;

static uint64_t add(uint64_t *v, uint64_t n)
{
	return __atomic_add_fetch(v, n, __ATOMIC_RELAXED);
}

static uint64_t get(uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

/* Progress, at most once a second; the main thread only (the counters
 * are atomics, mu may be held or not). */
static void progress(backfill *b, bool force)
{
	int64_t now = tally_now_ms(), ms = now - b->t0;
	uint64_t done = get(&b->done_lines);

	if (!force && now - b->last_report < 1000)
		return;
	b->last_report = now;
	fprintf(b->o->report, "produce: %llu lines, %llu produced, %llu "
		"rejected, %llu lines/s\n", (unsigned long long)done,
		(unsigned long long)get(&b->produced),
		(unsigned long long)get(&b->rejected),
		(unsigned long long)(ms > 0 ? done * 1000 / (uint64_t)ms :
					      done));
	fflush(b->o->report);
}

/* A rejected line: counted, printed while under max_reported. */
static void reject(backfill *b, uint64_t line, const char *reason,
		   const char *field, const char *detail)
{
	add(&b->rejected, 1);
	if (add(&b->reported, 1) > b->o->max_reported)
		return;
	/* one fprintf per line: lines of several threads do not mix */
	if (field != NULL)
		fprintf(b->o->report, "line %llu: rejected: %s %s: %s\n",
			(unsigned long long)line, reason, field, detail);
	else if (detail != NULL)
		fprintf(b->o->report, "line %llu: rejected: %s: %s\n",
			(unsigned long long)line, reason, detail);
	else
		fprintf(b->o->report, "line %llu: rejected: %s\n",
			(unsigned long long)line, reason);
}

typedef struct parser {
	backfill *b;
	msgpack_sbuffer sb;
	tally_json_line held;
	union {
		tally_usage_event u;
		tally_rated_event r;
		tally_command c;
	} ev;
	pthread_t tid;
} parser;

/*
 * A usage or rated event the line reader accepted, encoded and queued.
 * The reader is the strict core that decodes messages, and what it accepts
 * encodes to bytes that core accepts again unchanged
 * (test_codec_json_line), so the decode-back check of
 * tally_producer_send_*_sb is skipped: about a tenth of the parser
 * threads' CPU in a profile (docs/bench.md, "What bounds `tally
 * produce`").
 */
static int send_event(parser *ps, void *opaque, tally_error *err)
{
	const tally_usage_event *ev = &ps->ev.u;

	msgpack_sbuffer_clear(&ps->sb);
	if (ps->b->o->schema == TALLY_JSON_RATED) {
		ev = &ps->ev.r.ev;
		tally_codec_encode_rated(&ps->sb, &ps->ev.r);
	} else {
		tally_codec_encode_usage(&ps->sb, ev);
	}
	return tally_producer_send_raw(ps->b->o->producer, ev->tenant_id,
				       ev->id.ptr, ev->id.len, ev->source.ptr,
				       ev->source.len,
				       tally_meter_name(ev->meter), ev->time_ms,
				       ps->sb.data, ps->sb.size, opaque, err);
}

/* One line: 1 sent, 0 rejected, -1 the run must stop (b->stop_err). */
static int one_line(parser *ps, uint64_t line, const char *s, size_t n)
{
	backfill *b = ps->b;
	void *opaque = (void *)(uintptr_t)line;
	tally_codec_error ce;
	tally_error err;
	int rc;

	rc = tally_codec_from_json_line(b->o->schema, &ps->ev, s, n,
					&ps->held, &ce);
	if (rc != 0) {
		if (strcmp(ce.reason, "bad_json") == 0)
			reject(b, line, "bad_json", NULL, ce.detail);
		else
			reject(b, line, ce.reason, ce.field[0] ? ce.field : "-",
			       ce.detail);
		return 0;
	}
	if (b->o->schema == TALLY_JSON_COMMAND)
		rc = tally_producer_send_command_sb(b->o->producer, &ps->ev.c,
						   &ps->sb, opaque, &err);
	else
		rc = send_event(ps, opaque, &err);
	if (rc == TALLY_EINVALID) {
		reject(b, line, err.msg, NULL, NULL);
		return 0;
	}
	if (rc != 0) {
		pthread_mutex_lock(&b->mu);
		if (!b->stop) {
			__atomic_store_n(&b->stop, true, __ATOMIC_RELAXED);
			b->stop_rc = rc;
			tally_error_set(&b->stop_err, rc, "line %llu: %s",
					(unsigned long long)line, err.msg);
		}
		pthread_cond_broadcast(&b->room);
		pthread_cond_broadcast(&b->more);
		pthread_mutex_unlock(&b->mu);
		return -1;
	}
	return 1;
}

/* The lines of c (the last one may lack its newline). */
static void parse_chunk(parser *ps, const chunk *c)
{
	const char *p = c->buf, *end = c->buf + c->len;
	uint64_t line = c->first_line, lines = 0, sent = 0;
	int rc = 0;

	while (rc >= 0 && p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((nl != NULL ? nl : end) - p);

		while (n > 0 && p[n - 1] == '\r')
			n--;
		rc = n > 0 ? one_line(ps, line, p, n) : 0;
		if (rc > 0)
			sent++;
		line++;
		lines++;
		p = nl != NULL ? nl + 1 : end;
	}
	add(&ps->b->produced, sent);
	add(&ps->b->done_lines, lines);
}

/* Take the next chunk; NULL at the end of the input or on a stop. */
static chunk *take(backfill *b)
{
	chunk *c;

	pthread_mutex_lock(&b->mu);
	while (b->head == NULL && !b->eof && !b->stop)
		pthread_cond_wait(&b->more, &b->mu);
	c = b->stop ? NULL : b->head;
	if (c != NULL) {
		b->head = c->next;
		if (b->head == NULL)
			b->tail = NULL;
		b->queued--;
		pthread_cond_signal(&b->room);
	}
	pthread_mutex_unlock(&b->mu);
	return c;
}

static void give_back(backfill *b, chunk *c)
{
	pthread_mutex_lock(&b->mu);
	c->next = b->pool;
	b->pool = c;
	pthread_mutex_unlock(&b->mu);
}

static void *parser_main(void *arg)
{
	parser *ps = arg;
	backfill *b = ps->b;
	chunk *c;

	while ((c = take(b)) != NULL) {
		parse_chunk(ps, c);
		tally_json_line_release(&ps->held);
		give_back(b, c);
		/* delivery reports of what this and the others sent */
		tally_producer_poll(b->o->producer, 0);
	}
	pthread_mutex_lock(&b->mu);
	b->running--;
	pthread_cond_broadcast(&b->gone);
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

/* Wait on cv for at most 100 ms (mu held). */
static void wait_a_bit(backfill *b, pthread_cond_t *cv)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 100000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cv, &b->mu, &ts);
}

/* A chunk from the pool (or a new one) with room for at least need. */
static chunk *fresh(backfill *b, size_t need)
{
	chunk *c;

	pthread_mutex_lock(&b->mu);
	while (b->queued >= b->max_queued && !b->stop) {
		wait_a_bit(b, &b->room);
		progress(b, false);
	}
	c = b->pool;
	if (c != NULL)
		b->pool = c->next;
	pthread_mutex_unlock(&b->mu);
	if (c == NULL)
		c = tally_xcalloc(1, sizeof(*c));
	if (c->cap < need) {
		free(c->buf);
		c->cap = need;
		c->buf = tally_xmalloc(c->cap);
	}
	c->len = 0;
	c->next = NULL;
	return c;
}

static void queue(backfill *b, chunk *c)
{
	pthread_mutex_lock(&b->mu);
	if (b->tail != NULL)
		b->tail->next = c;
	else
		b->head = c;
	b->tail = c;
	b->queued++;
	pthread_cond_signal(&b->more);
	pthread_mutex_unlock(&b->mu);
}

static size_t count_lines(const char *p, size_t n)
{
	const char *end = p + n;
	size_t k = 0;

	while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		k++;
		p++;
	}
	return k;
}

/* Read into c until it is full or the input ends. */
static int fill(int fd, chunk *c, bool *eof, tally_error *err)
{
	while (c->len < c->cap) {
		ssize_t r = read(fd, c->buf + c->len, c->cap - c->len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return tally_error_set(err, TALLY_ERROR, "read: %s",
					       strerror(errno));
		if (r == 0) {
			*eof = true;
			return 0;
		}
		c->len += (size_t)r;
	}
	return 0;
}

/* The end of the last whole line in c (0: none). */
static size_t last_line_end(const chunk *c)
{
	size_t i = c->len;

	while (i > 0 && c->buf[i - 1] != '\n')
		i--;
	return i;
}

/*
 * The reader: chunks cut after their last newline (what follows starts
 * the next chunk; a line longer than a chunk grows it), numbered by
 * counting newlines. *lines: how many lines the input had.
 */
static int read_all(backfill *b, uint64_t *lines, tally_error *err)
{
	chunk *c = fresh(b, CHUNK_BYTES), *next = NULL;
	uint64_t line = 1;
	bool eof = false;
	int rc = 0;

	while (c != NULL) {
		size_t cut, tail;

		rc = fill(b->o->fd, c, &eof, err);
		if (rc != 0 || __atomic_load_n(&b->stop, __ATOMIC_RELAXED)) {
			give_back(b, c);
			break;
		}
		cut = eof ? c->len : last_line_end(c);
		if (cut == 0 && !eof) {
			c->cap *= 2;
			c->buf = tally_xrealloc(c->buf, c->cap);
			continue;
		}
		tail = c->len - cut;
		next = NULL;
		if (!eof) {
			next = fresh(b, tail * 2 > CHUNK_BYTES ? tail * 2 :
								 CHUNK_BYTES);
			memcpy(next->buf, c->buf + cut, tail);
			next->len = tail;
		}
		c->len = cut;
		c->first_line = line;
		line += count_lines(c->buf, c->len) +
			(cut > 0 && c->buf[cut - 1] != '\n');
		if (c->len > 0)
			queue(b, c);
		else
			give_back(b, c);
		progress(b, false);
		c = next;
	}
	*lines = line - 1;
	return rc;
}

static void free_chunks(chunk *c)
{
	while (c != NULL) {
		chunk *n = c->next;

		free(c->buf);
		free(c);
		c = n;
	}
}

/* After the input: wait for the parsers, with progress. */
static void wait_parsers(backfill *b)
{
	pthread_mutex_lock(&b->mu);
	b->eof = true;
	pthread_cond_broadcast(&b->more);
	while (b->running > 0) {
		wait_a_bit(b, &b->gone);
		progress(b, false);
	}
	pthread_mutex_unlock(&b->mu);
}

int tally_backfill_run(const tally_backfill_opts *opts,
		       tally_backfill_stats *stats, tally_error *err)
{
	backfill b;
	parser *ps;
	uint64_t lines = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	/* by default a core is left to librdkafka's broker thread, which
	 * builds and compresses every request: on 2 cores one parser thread
	 * sends faster, and with less CPU per line, than two */
	int n = opts->threads > 0 ? opts->threads :
				    (int)(ncpu > 2 ? ncpu - 1 : 1);
	int i, rc;

	/* commands in file order: a create_tenant before its tenant's later
	 * commands (one parser takes the chunks as they are queued) */
	if (opts->schema == TALLY_JSON_COMMAND)
		n = 1;
	if (n > MAX_THREADS)
		n = MAX_THREADS;
	memset(&b, 0, sizeof(b));
	b.o = opts;
	pthread_mutex_init(&b.mu, NULL);
	pthread_cond_init(&b.more, NULL);
	pthread_cond_init(&b.room, NULL);
	pthread_cond_init(&b.gone, NULL);
	b.max_queued = (size_t)n * 2;
	b.t0 = b.last_report = tally_now_ms();
	ps = tally_xcalloc((size_t)n, sizeof(*ps));
	for (i = 0; i < n; i++) {
		ps[i].b = &b;
		msgpack_sbuffer_init(&ps[i].sb);
		tally_json_line_init(&ps[i].held);
		if (pthread_create(&ps[i].tid, NULL, parser_main, &ps[i]) != 0)
			break; /* run with the threads there are */
		b.running++;
	}
	n = i;
	rc = n > 0 ? read_all(&b, &lines, err) :
		     tally_error_set(err, TALLY_ERROR,
				     "cannot start a parser thread");
	wait_parsers(&b);
	for (i = 0; i < n; i++) {
		pthread_join(ps[i].tid, NULL);
		msgpack_sbuffer_destroy(&ps[i].sb);
		tally_json_line_release(&ps[i].held);
	}
	free(ps);
	free_chunks(b.head);
	free_chunks(b.pool);
	if (rc == 0 && b.stop) {
		rc = b.stop_rc;
		if (err != NULL)
			*err = b.stop_err;
	}
	progress(&b, true);
	stats->lines = lines;
	stats->produced = b.produced;
	stats->rejected = b.rejected;
	stats->reported = b.reported;
	pthread_mutex_destroy(&b.mu);
	pthread_cond_destroy(&b.more);
	pthread_cond_destroy(&b.room);
	pthread_cond_destroy(&b.gone);
	return rc;
}
