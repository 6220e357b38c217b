/*
 * metrics.c: fixed arrays of atomic counters, so counting never allocates
 * or locks.  Bot API methods are counted under a fixed set of names (the
 * rest as "other") to keep the label set bounded whatever handlers call.
 */
#include "metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "outbox.h"
#include "update.h"
#include "util.h"

static const char *const update_results[MU_N] = { "inline", "followup",
	"no_calls", "failed", "unhandled", "duplicate", "retry" };
static const char *const reject_reasons[MR_N] = { "path", "source", "secret",
	"method", "too_large", "bad_update", "bad_framing" };
static const char *const methods[] = { "sendMessage", "sendPhoto",
	"sendDocument", "sendChatAction", "editMessageText",
	"editMessageReplyMarkup", "deleteMessage", "answerCallbackQuery",
	"answerInlineQuery", "setWebhook", "getWebhookInfo", "getMe",
	"deleteWebhook", "other" };
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))
static const char *const statuses[] = { "ok", "retry_after", "transient",
	"permanent" };
static const uint64_t buckets_ms[] = { 1, 5, 10, 25, 50, 100, 250, 500,
	1000, 2500, 5000, 10000, 30000 };
#define NBUCKETS (sizeof(buckets_ms) / sizeof(buckets_ms[0]))

static atomic_uint_fast64_t updates[UPDATE_TYPES_N + 1][MU_N];
static atomic_uint_fast64_t rejects[MR_N];
static atomic_uint_fast64_t api[NMETHODS][4];
struct hist {
	atomic_uint_fast64_t bucket[NBUCKETS + 1];
	atomic_uint_fast64_t sum_ms, count;
};

static struct hist handler_hist, wait_hist;
static atomic_uint_fast64_t worker_exits;
/* Per handler name (A-Z a-z 0-9 _ -, at most 64: config.c), in slots
 * claimed once each (0 free, 1 being named, 2 named); names past the
 * last slot count as "other", so the label set stays bounded. */
#define TEXT_LIMIT_SLOTS 64
static struct {
	atomic_int state;
	char name[65];
	atomic_uint_fast64_t n;
} text_limits[TEXT_LIMIT_SLOTS + 1];
static atomic_uint_fast64_t state_writes, state_expiries;

void
metrics_update(int type_index, enum metric_update result)
{
	int t = type_index >= 0 && type_index < UPDATE_TYPES_N ? type_index :
	    UPDATE_TYPES_N;

	atomic_fetch_add_explicit(&updates[t][result], 1, memory_order_relaxed);
}

void
metrics_reject(enum metric_reject reason)
{
	atomic_fetch_add_explicit(&rejects[reason], 1, memory_order_relaxed);
}

static void
hist_add(struct hist *h, uint64_t ms)
{
	size_t i = 0;

	while (i < NBUCKETS && ms > buckets_ms[i])
		i++;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ms, ms, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

void
metrics_handler_ms(uint64_t ms)
{
	hist_add(&handler_hist, ms);
}

void
metrics_chat_wait_ms(uint64_t ms)
{
	hist_add(&wait_hist, ms);
}

void
metrics_botapi(const char *method, enum botapi_status status)
{
	size_t i = 0;

	while (i < NMETHODS - 1 && strcmp(methods[i], method) != 0)
		i++;
	atomic_fetch_add_explicit(&api[i][status], 1, memory_order_relaxed);
}

void
metrics_worker_exit(void)
{
	atomic_fetch_add_explicit(&worker_exits, 1, memory_order_relaxed);
}

void
metrics_text_limit(const char *handler)
{
	size_t i;

	for (i = 0; i < TEXT_LIMIT_SLOTS; i++) {
		int st = atomic_load(&text_limits[i].state);

		if (st == 0 && atomic_compare_exchange_strong(
		    &text_limits[i].state, &st, 1)) {
			snprintf(text_limits[i].name, sizeof(text_limits[i].name),
			    "%s", handler);
			atomic_store(&text_limits[i].state, 2);
			st = 2;
		}
		while (st == 1)		/* another thread is naming it */
			st = atomic_load(&text_limits[i].state);
		if (strncmp(text_limits[i].name, handler,
		    sizeof(text_limits[i].name) - 1) == 0)
			break;
	}
	atomic_fetch_add_explicit(&text_limits[i].n, 1, memory_order_relaxed);
}

void
metrics_state_written(void)
{
	atomic_fetch_add_explicit(&state_writes, 1, memory_order_relaxed);
}

void
metrics_states_expired(long n)
{
	if (n > 0)
		atomic_fetch_add_explicit(&state_expiries, (uint64_t)n,
		    memory_order_relaxed);
}

#define LOAD(x) ((uint64_t)atomic_load_explicit(&(x), memory_order_relaxed))

uint64_t
metrics_state_writes(void)
{
	return LOAD(state_writes);
}

static void
hist_render(struct buf *b, const struct hist *h, const char *name,
    const char *help)
{
	uint64_t cum = 0;

	buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (size_t i = 0; i < NBUCKETS; i++) {
		cum += LOAD(h->bucket[i]);
		buf_printf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name,
		    (double)buckets_ms[i] / 1000.0, cum);
	}
	cum += LOAD(h->bucket[NBUCKETS]);
	buf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
	buf_printf(b, "%s_sum %.3f\n", name, (double)LOAD(h->sum_ms) / 1000.0);
	buf_printf(b, "%s_count %" PRIu64 "\n", name, LOAD(h->count));
}

char *
metrics_render(const struct metrics_gauges *g)
{
	struct buf b = { 0 };

	buf_puts(&b, "# HELP tgwebhookd_updates_total Updates received, by "
	    "type and what became of them.\n"
	    "# TYPE tgwebhookd_updates_total counter\n");
	for (int t = 0; t <= UPDATE_TYPES_N; t++)
		for (int r = 0; r < MU_N; r++)
			if (LOAD(updates[t][r]) > 0)
				buf_printf(&b, "tgwebhookd_updates_total{type=\""
				    "%s\",result=\"%s\"} %" PRIu64 "\n",
				    t < UPDATE_TYPES_N ? update_type_name(t) :
				    "unknown", update_results[r],
				    LOAD(updates[t][r]));
	buf_puts(&b, "# HELP tgwebhookd_rejected_requests_total Requests "
	    "refused before any handler, by reason.\n"
	    "# TYPE tgwebhookd_rejected_requests_total counter\n");
	for (int r = 0; r < MR_N; r++)
		buf_printf(&b, "tgwebhookd_rejected_requests_total{reason=\"%s\"}"
		    " %" PRIu64 "\n", reject_reasons[r], LOAD(rejects[r]));
	hist_render(&b, &handler_hist, "tgwebhookd_handler_duration_seconds",
	    "Time from an update to its handler's calls.");
	hist_render(&b, &wait_hist, "tgwebhookd_chat_wait_seconds",
	    "Time updates waited for an earlier update of their chat (or "
	    "user) to be handled; _count is how many waited.");
	buf_puts(&b, "# HELP tgwebhookd_botapi_calls_total Bot API calls "
	    "made, by method and outcome.\n"
	    "# TYPE tgwebhookd_botapi_calls_total counter\n");
	for (size_t m = 0; m < NMETHODS; m++)
		for (int s = 0; s < 4; s++)
			if (LOAD(api[m][s]) > 0)
				buf_printf(&b, "tgwebhookd_botapi_calls_total{"
				    "method=\"%s\",result=\"%s\"} %" PRIu64 "\n",
				    methods[m], statuses[s], LOAD(api[m][s]));
	buf_printf(&b, "# HELP tgwebhookd_worker_exits_total Worker processes "
	    "that exited or were killed while the daemon ran (each is "
	    "restarted).\n"
	    "# TYPE tgwebhookd_worker_exits_total counter\n"
	    "tgwebhookd_worker_exits_total %" PRIu64 "\n", LOAD(worker_exits));
	buf_puts(&b, "# HELP tgwebhookd_text_match_limit_total `text =` "
	    "matches that gave up at their work bound (taken as no match), "
	    "by handler.\n"
	    "# TYPE tgwebhookd_text_match_limit_total counter\n");
	for (size_t i = 0; i <= TEXT_LIMIT_SLOTS; i++)
		if (LOAD(text_limits[i].n) > 0)
			buf_printf(&b, "tgwebhookd_text_match_limit_total{"
			    "handler=\"%s\"} %" PRIu64 "\n", i < TEXT_LIMIT_SLOTS ?
			    text_limits[i].name : "other",
			    LOAD(text_limits[i].n));
	{
		uint64_t n429 = 0;

		for (size_t m = 0; m < NMETHODS; m++)
			n429 += LOAD(api[m][BOTAPI_RETRY_AFTER]);
		buf_printf(&b, "# HELP tgwebhookd_botapi_429_total Answers "
		    "429 Too Many Requests.\n"
		    "# TYPE tgwebhookd_botapi_429_total counter\n"
		    "tgwebhookd_botapi_429_total %" PRIu64 "\n", n429);
	}
	buf_printf(&b,
	    "# HELP tgwebhookd_outbox_pending Follow-up calls waiting.\n"
	    "# TYPE tgwebhookd_outbox_pending gauge\n"
	    "tgwebhookd_outbox_pending %ld\n"
	    "# HELP tgwebhookd_outbox_dead Dead letters kept.\n"
	    "# TYPE tgwebhookd_outbox_dead gauge\n"
	    "tgwebhookd_outbox_dead %ld\n"
	    "# HELP tgwebhookd_outbox_oldest_seconds Age of the oldest "
	    "waiting call.\n"
	    "# TYPE tgwebhookd_outbox_oldest_seconds gauge\n"
	    "tgwebhookd_outbox_oldest_seconds %.3f\n"
	    "# HELP tgwebhookd_webhook_registered 1 once setWebhook "
	    "succeeded.\n"
	    "# TYPE tgwebhookd_webhook_registered gauge\n"
	    "tgwebhookd_webhook_registered %d\n"
	    "# HELP tgwebhookd_store_healthy 0 while writes to the store "
	    "fail (updates are answered 503).\n"
	    "# TYPE tgwebhookd_store_healthy gauge\n"
	    "tgwebhookd_store_healthy %d\n",
	    g->outbox_pending, g->outbox_dead, g->outbox_oldest_s,
	    g->registered ? 1 : 0, g->store_failing_since == 0 ? 1 : 0);
	buf_puts(&b, "# HELP tgwebhookd_outbox_lane_pending Calls waiting, "
	    "per lane.\n# TYPE tgwebhookd_outbox_lane_pending gauge\n");
	for (int l = 0; l < STORE_LANES; l++)
		buf_printf(&b, "tgwebhookd_outbox_lane_pending{lane=\"%s\"} "
		    "%ld\n", outbox_lane_name((enum store_lane)l),
		    g->lane_depth[l]);
	buf_puts(&b, "# HELP tgwebhookd_outbox_lane_oldest_seconds Age of "
	    "the oldest waiting call, per lane.\n"
	    "# TYPE tgwebhookd_outbox_lane_oldest_seconds gauge\n");
	for (int l = 0; l < STORE_LANES; l++)
		buf_printf(&b, "tgwebhookd_outbox_lane_oldest_seconds{lane="
		    "\"%s\"} %.3f\n", outbox_lane_name((enum store_lane)l),
		    g->lane_oldest_s[l]);
	if (g->states_known) {
		buf_puts(&b, "# HELP tgwebhookd_states Conversation states "
		    "kept, by name (names no state = or set_state key uses: "
		    "other).\n# TYPE tgwebhookd_states gauge\n");
		for (size_t i = 0; i < g->nstates; i++)
			buf_printf(&b, "tgwebhookd_states{name=\"%s\"} %ld\n",
			    g->state_names[i], g->state_counts[i]);
		buf_printf(&b, "tgwebhookd_states{name=\"other\"} %ld\n",
		    g->states_other);
	}
	buf_printf(&b, "# HELP tgwebhookd_state_expiries_total Conversation "
	    "states deleted at their [state] ttl.\n"
	    "# TYPE tgwebhookd_state_expiries_total counter\n"
	    "tgwebhookd_state_expiries_total %" PRIu64 "\n",
	    LOAD(state_expiries));
	if (g->cert_expiry > 0)
		buf_printf(&b, "# HELP tgwebhookd_certificate_expiry_timestamp"
		    "_seconds When the served certificate expires.\n"
		    "# TYPE tgwebhookd_certificate_expiry_timestamp_seconds "
		    "gauge\ntgwebhookd_certificate_expiry_timestamp_seconds %"
		    PRId64 "\n", g->cert_expiry);
	if (g->telegram_pending >= 0)
		buf_printf(&b, "# HELP tgwebhookd_telegram_pending_updates "
		    "pending_update_count from getWebhookInfo.\n"
		    "# TYPE tgwebhookd_telegram_pending_updates gauge\n"
		    "tgwebhookd_telegram_pending_updates %ld\n",
		    g->telegram_pending);
	buf_printf(&b, "# HELP tgwebhookd_telegram_last_error_timestamp_"
	    "seconds last_error_date from getWebhookInfo (0: none).\n"
	    "# TYPE tgwebhookd_telegram_last_error_timestamp_seconds gauge\n"
	    "tgwebhookd_telegram_last_error_timestamp_seconds %" PRId64 "\n",
	    g->telegram_last_error);
	buf_printf(&b, "# HELP tgwebhookd_source The update source (1).\n"
	    "# TYPE tgwebhookd_source gauge\n"
	    "tgwebhookd_source{source=\"%s\"} 1\n", g->polling ? "polling" :
	    "webhook");
	if (g->polling)
		buf_printf(&b, "# HELP tgwebhookd_polls_total getUpdates calls "
		    "answered.\n"
		    "# TYPE tgwebhookd_polls_total counter\n"
		    "tgwebhookd_polls_total %" PRIu64 "\n"
		    "# HELP tgwebhookd_poll_errors_total getUpdates calls "
		    "failed (409, 429, network, 5xx, garbage).\n"
		    "# TYPE tgwebhookd_poll_errors_total counter\n"
		    "tgwebhookd_poll_errors_total %" PRIu64 "\n"
		    "# HELP tgwebhookd_poll_last_success_timestamp_seconds "
		    "When getUpdates last answered (0: never).\n"
		    "# TYPE tgwebhookd_poll_last_success_timestamp_seconds "
		    "gauge\n"
		    "tgwebhookd_poll_last_success_timestamp_seconds %.3f\n"
		    "# HELP tgwebhookd_poll_offset The next update_id asked "
		    "for (every one below it is durable).\n"
		    "# TYPE tgwebhookd_poll_offset gauge\n"
		    "tgwebhookd_poll_offset %" PRId64 "\n"
		    "# HELP tgwebhookd_poll_conflict 1 while getUpdates gets "
		    "409 (a webhook is set, or another poller runs).\n"
		    "# TYPE tgwebhookd_poll_conflict gauge\n"
		    "tgwebhookd_poll_conflict %d\n", g->polls, g->poll_errors,
		    (double)g->poll_last_ok_ms / 1000.0, g->poll_offset,
		    g->poll_conflict ? 1 : 0);
	/* the name is [A-Za-z0-9._-] (config.c): no escaping */
	buf_printf(&b, "# HELP tgwebhookd_instance_info This instance "
	    "([cluster] instance) and whether several share its store (1).\n"
	    "# TYPE tgwebhookd_instance_info gauge\n"
	    "tgwebhookd_instance_info{instance=\"%s\",clustered=\"%s\"} 1\n"
	    "# HELP tgwebhookd_duty_held 1 while this instance holds the "
	    "duty (of several instances, one does).\n"
	    "# TYPE tgwebhookd_duty_held gauge\n", g->instance, g->clustered ?
	    "yes" : "no");
	for (int k = 0; k < DUTIES; k++)
		if (g->duty[k] >= 0)
			buf_printf(&b, "tgwebhookd_duty_held{duty=\"%s\"} %d\n",
			    duty_name((enum duty_kind)k), g->duty[k]);
	return buf_steal(&b);
}
