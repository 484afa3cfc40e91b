/*
 * relay_int.h - what the files of tally-relay share: the relay's state,
 * one webhook request in flight, the outcomes it can be answered with, and
 * the functions one file offers the others.
 */
#ifndef TALLY_RELAY_INT_H
#define TALLY_RELAY_INT_H

#include "tally/relay.h"
#include "tally/producer.h"

#include "base/strbuf.h"

#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define MAX_KEY 255         /* longer customer ids fall back to the event */
#define MAX_SIG 1024        /* longer Stripe-Signature headers: 400 */
#define MAX_CTYPE 128       /* longer Content-Types: application/json */
/*
 * What a record adds to the body, counted by librdkafka against
 * message.max.bytes: the key (<= MAX_KEY), the headers stripe-signature
 * (<= MAX_SIG), content-type (<= MAX_CTYPE), received-at (<= 20) with
 * their names and varints (< 100). relay.max_body + RECORD_OVERHEAD must
 * fit in message.max.bytes.
 */
#define RECORD_OVERHEAD 2048

#define EVENTS_HELP "Usage events of the HTTP intake: accepted (durable " \
		    "on Kafka), rejected (by reason) or unavailable (Kafka " \
		    "did not take them in time)."

/* Outcomes: one series of tally_relay_requests_total each. */
typedef enum {
	O_OK = 0,
	O_MISSING_HEADER,
	O_MALFORMED_HEADER,
	O_NO_V1,
	O_EXPIRED,
	O_BAD_SIGNATURE,
	O_MALFORMED_BODY,
	O_TOO_LARGE,
	O_KAFKA,
	O_DRAINING,
	O_METHOD,
	O_NOT_FOUND,
	O_BODY_TIMEOUT,
	O_BUSY,
	/* the intake (relay_intake.c, relay_auth.c) */
	O_ACCEPTED,
	O_PARTIAL,
	O_UNSUPPORTED_TYPE,
	O_NO_KEY,
	O_BAD_KEY,
	O_RATE_LIMITED,
	O_AUTH_UNAVAILABLE,
	O_TOO_MANY_EVENTS,
	O__COUNT
} tally_relay__outcome;

/* HTTP status and reason of each outcome (relay.c). */
extern const struct tally_relay__answer {
	unsigned status;
	const char *reason;
} tally_relay__outcomes[O__COUNT];

/* API keys and their buckets (relay_auth.c) */
typedef struct tally_relay__auth tally_relay__auth;

/* The stages of an answered intake request, one series each of
 * tally_relay_intake_seconds (relay_intake.c). */
typedef enum {
	ST_READ = 0, /* headers read -> whole body read */
	ST_VALIDATE, /* -> events parsed and judged */
	ST_PRODUCE,  /* -> every accepted event queued in the producer */
	ST_KAFKA,    /* -> the last delivery report */
	ST_ANSWER,   /* -> the answer queued (connection resumed) */
	ST_TOTAL,    /* headers read -> the answer queued */
	ST__COUNT
} tally_relay__stage;

/* What the body of an intake request holds, by its Content-Type. */
typedef enum {
	K_JSON = 1,  /* application/json: one usage event or an array */
	K_CE,        /* application/cloudevents+json: one CloudEvent */
	K_CE_BATCH,  /* application/cloudevents-batch+json: an array */
} tally_relay__kind;

struct tally_relay {
	struct MHD_Daemon *d;
	MHD_socket lsock;
	rd_kafka_t *rk;
	pthread_t poller;
	bool poller_started;
	atomic_int poll_stop;
	atomic_int fatal;

	char *topic;
	char *path;
	char *secrets[2];
	const char *secret_list[2];
	size_t nsecrets;
	atomic_int_fast64_t tolerance_s;
	int64_t produce_timeout_ms;
	size_t max_body;
	int64_t body_timeout_ms;
	size_t max_buffered;
	atomic_size_t buffered; /* body bytes held by requests being read */
	int port;
	tally_metrics_server *admin; /* /metrics, /healthz, /readyz */

	/* the intake: POST intake_path ("" when off) onto topics.usage */
	char *intake_path;
	size_t intake_max_body;
	size_t intake_max_events;
	tally_producer *usage;
	pthread_t usage_poller;
	bool usage_poller_started;
	tally_relay__auth *auth;
	tally_counter *events_accepted, *events_unavailable;
	tally_histogram *intake_lat[ST__COUNT]; /* tally_relay_intake_seconds */

	pthread_mutex_t mu; /* pending, stopping, stopped */
	pthread_cond_t cv;
	int pending; /* produced, not yet answered and completed */
	bool stopping, stopped;

	pthread_mutex_t ready_mu;
	int64_t ready_at_ms;
	int ready_bad;
	char ready_detail[128];

	tally_metrics *m;
	tally_counter *requests[O__COUNT];
	tally_counter *delivered, *delivery_failed;
	tally_histogram *produce_lat;
	tally_histogram *request_lat;
	tally_gauge *inflight;
};

typedef enum { S_READING = 0, S_WAITING, S_DONE } rstate;

typedef struct tally_relay__req {
	tally_relay *r;
	struct MHD_Connection *conn;
	tally_strbuf body;
	size_t held; /* body bytes counted in r->buffered */
	int64_t deadline_ns; /* the whole body by then (monotonic) */
	bool counted; /* in r->pending until completed_cb */
	atomic_int state;
	atomic_int result; /* outcome once S_DONE */
	int64_t received_ms;
	int64_t start_ns;
	int64_t produce_ns;
	char event_id[64];
	/* the intake */
	tally_relay__kind kind; /* 0: a webhook */
	size_t max_body;
	uint8_t tenant[16];     /* the key's */
	atomic_int outstanding; /* events without a report, + 1 while sending */
	atomic_int failed;      /* an event Kafka did not take */
	int accepted;           /* events produced */
	int64_t body_ns;        /* the whole body read (monotonic) */
	int64_t queued_ns;      /* every event queued */
	int64_t reported_ns;    /* the last delivery report */
	tally_strbuf answer;    /* the JSON answer when all are delivered */
} tally_relay__req;

/* signature and event (relay_event.c): the key to produce with */
tally_relay__outcome tally_relay__verify(tally_relay *r, tally_relay__req *rq,
					 const char *sig, char *key,
					 size_t keylen);

/* API keys (relay_auth.c) */
tally_relay__auth *tally_relay__auth_new(const char *db_url, int64_t ttl_ms,
					 size_t max, tally_metrics *m);
void tally_relay__auth_free(tally_relay__auth *a);
/* O_OK with the key's tenant, O_NO_KEY, O_BAD_KEY, O_AUTH_UNAVAILABLE or
 * O_RATE_LIMITED with the seconds to wait. */
tally_relay__outcome tally_relay__auth_check(tally_relay__auth *a,
					     const char *authorization,
					     uint8_t tenant[16],
					     int64_t *retry_after_s);

/* the intake (relay_intake.c) */
/* The kind of body a Content-Type names, or 0 (415). */
tally_relay__kind tally_relay__intake_kind(const char *ctype);
/* The whole body is here: validate, produce, answer (now or when the
 * delivery reports are in). */
enum MHD_Result tally_relay__intake(tally_relay *r,
				    struct MHD_Connection *conn,
				    tally_relay__req *rq);
/* The stages of an intake request answered 202/207, into
 * tally_relay_intake_seconds. */
void tally_relay__intake_observe(tally_relay *r, const tally_relay__req *rq);
/* Register tally_relay_intake_seconds. */
void tally_relay__intake_metrics(tally_relay *r);
/* Delivery report of one intake event (the usage producer's poll thread) */
void tally_relay__intake_delivered(const tally_delivery *dr, void *payload);

/* HTTP answers (relay_http.c): body NULL for the outcome's own */
enum MHD_Result tally_relay__respond(tally_relay *r,
				     struct MHD_Connection *conn,
				     tally_relay__outcome o,
				     tally_relay__req *rq, const char *body,
				     int64_t retry_after_s);
/* Count rq as pending (false: draining, nothing counted). */
bool tally_relay__hold(tally_relay *r, tally_relay__req *rq);

/* admin listener (relay_admin.c) */
int tally_relay__admin_start(tally_relay *r, const char *listen,
			     tally_error *err);

/* Kafka (relay_kafka.c) */
int tally_relay__kafka_setup(tally_relay *r, const tally_config *cfg,
			     tally_error *err);
void *tally_relay__poll_main(void *arg);
void *tally_relay__usage_poll_main(void *arg);
int tally_relay__usage_setup(tally_relay *r, const tally_config *cfg,
			     tally_error *err);
/* Record the answer of rq and resume its connection. */
void tally_relay__finish(tally_relay__req *rq, tally_relay__outcome o);
/* Produce rq's body; the connection is already suspended. */
void tally_relay__produce(tally_relay *r, tally_relay__req *rq,
			  const char *key, const char *sig, const char *ctype);

/* HTTP (relay_http.c): the libmicrohttpd callbacks */
enum MHD_Result tally_relay__access_cb(void *cls, struct MHD_Connection *conn,
				       const char *url, const char *method,
				       const char *version,
				       const char *upload_data,
				       size_t *upload_data_size,
				       void **con_cls);
void tally_relay__completed_cb(void *cls, struct MHD_Connection *conn,
			       void **con_cls,
			       enum MHD_RequestTerminationCode toe);

#endif /* TALLY_RELAY_INT_H */
