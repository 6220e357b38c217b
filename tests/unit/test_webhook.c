/* Unit tests for webhook.c against a fake Bot API: what setWebhook
 * sends, getMe and getWebhookInfo read, the registration thread retrying
 * after a 429 with its retry_after, and the watch: a webhook that is no
 * longer ours is reported and registered again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "botapi.h"
#include "webhook.h"

#include "fake_botapi.h"

#define TOKEN "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

static void
test_set_webhook_fields(void **state)
{
	struct fake_botapi *f = fake_start();
	struct botapi *api = botapi_new(f->url, TOKEN, 5000);
	struct webhook_params p = {
		.url = "https://bot.example:8443/hook",
		.secret_token = "s3cret",
		.cert_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n"
		    "-----END CERTIFICATE-----\n",
		.max_connections = 40,
		.allowed_updates = "message, callback_query",
		.drop_pending_updates = true,
	};
	struct botapi_result r;
	const char *body;

	(void)state;
	assert_int_equal(webhook_set(api, &p, &r), BOTAPI_OK);
	botapi_result_clear(&r);
	body = fake_body(f, "setWebhook", 0);
	assert_non_null(body);
	/* multipart: each field, the certificate as a file */
	assert_non_null(strstr(body, "name=\"url\"\r\n\r\n"
	    "https://bot.example:8443/hook\r\n"));
	assert_non_null(strstr(body, "name=\"max_connections\"\r\n\r\n40\r\n"));
	assert_non_null(strstr(body, "name=\"secret_token\"\r\n\r\ns3cret\r\n"));
	assert_non_null(strstr(body, "name=\"allowed_updates\"\r\n\r\n"
	    "[\"message\",\"callback_query\"]\r\n"));
	assert_non_null(strstr(body, "name=\"drop_pending_updates\"\r\n\r\n"
	    "true\r\n"));
	assert_non_null(strstr(body, "name=\"certificate\"; filename=\""
	    "certificate.pem\""));
	assert_non_null(strstr(body, "-----BEGIN CERTIFICATE-----"));
	assert_null(strstr(body, "ip_address"));
	/* without a certificate, secret or list: none of those fields */
	p.cert_pem = NULL;
	p.secret_token = "";
	p.allowed_updates = NULL;
	p.drop_pending_updates = false;
	assert_int_equal(webhook_set(api, &p, &r), BOTAPI_OK);
	botapi_result_clear(&r);
	body = fake_body(f, "setWebhook", 1);
	assert_null(strstr(body, "certificate"));
	assert_null(strstr(body, "secret_token"));
	assert_null(strstr(body, "allowed_updates"));
	/* Telegram refuses: its description is kept */
	fake_script(f, "setWebhook", 400, "{\"ok\":false,\"error_code\":400,"
	    "\"description\":\"Bad Request: bad webhook: Webhook can be set up "
	    "only on ports 80, 88, 443 or 8443\"}");
	assert_int_equal(webhook_set(api, &p, &r), BOTAPI_PERMANENT);
	assert_non_null(strstr(r.description, "only on ports"));
	botapi_result_clear(&r);
	botapi_free(api);
	fake_stop(f);
}

static void
test_get_me_and_info(void **state)
{
	struct fake_botapi *f = fake_start();
	struct botapi *api = botapi_new(f->url, TOKEN, 5000);
	struct bot_identity id = { NULL };
	struct webhook_state st = { 0 };

	(void)state;
	fake_script(f, "getMe", 200, "{\"ok\":true,\"result\":{\"id\":1,"
	    "\"is_bot\":true,\"username\":\"HelloBot\"}}");
	assert_int_equal(webhook_learn_username(api, &id), 0);
	assert_string_equal(atomic_load(&id.username), "HelloBot");
	fake_script(f, "getMe", 401, "{\"ok\":false,\"error_code\":401,"
	    "\"description\":\"Unauthorized\"}");
	assert_int_equal(webhook_learn_username(api, &id), -1);
	assert_string_equal(atomic_load(&id.username), "HelloBot");
	free(atomic_load(&id.username));

	fake_script(f, "getWebhookInfo", 200, "{\"ok\":true,\"result\":{"
	    "\"url\":\"https://bot.example/hook\",\"has_custom_certificate\":"
	    "true,\"pending_update_count\":3,\"max_connections\":40,"
	    "\"last_error_date\":1700000000,\"last_error_message\":\"Connection "
	    "refused\"}}");
	assert_int_equal(webhook_log_info(api, &st), 0);
	assert_int_equal(st.pending_update_count, 3);
	assert_int_equal(st.last_error_date, 1700000000);
	assert_string_equal(st.last_error_message, "Connection refused");
	botapi_free(api);
	fake_stop(f);
}

static void
test_thread_retries_after_429(void **state)
{
	struct fake_botapi *f = fake_start();
	struct webhook_params p = { .url = "https://bot.example/hook",
		.secret_token = "s3cret", .max_connections = 40 };
	struct bot_identity id = { NULL };
	struct webhook *w;
	struct webhook_state st;

	(void)state;
	atomic_store(&id.username, xstrdup("HelloBot"));	/* no getMe */
	fake_script(f, "setWebhook", 429, "{\"ok\":false,\"error_code\":429,"
	    "\"description\":\"Too Many Requests: retry after 1\","
	    "\"parameters\":{\"retry_after\":1}}");
	w = webhook_start(botapi_new(f->url, TOKEN, 5000), &p, true, &id);
	fake_wait(f, "setWebhook", 2);
	for (int i = 0; i < 500 && !webhook_registered(w); i++)
		usleep(10000);
	assert_true(webhook_registered(w));
	webhook_state(w, &st);
	assert_true(st.registered);
	assert_int_equal(fake_count(f, "getMe"), 0);
	webhook_stop(w);
	free(atomic_load(&id.username));
	fake_stop(f);
}

static int
differs(const struct webhook_params *p, const char *info, char *why)
{
	json_t *j = json_loads(info, 0, NULL);
	int rc;

	assert_non_null(j);
	why[0] = '\0';
	rc = webhook_differs(p, j, why, 256);
	json_decref(j);
	return rc;
}

static void
test_differs(void **state)
{
	struct webhook_params p = { .url = "https://bot.example:8443/hook",
		.max_connections = 40 };
	char why[256];

	(void)state;
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"has_custom_certificate\":false,\"max_connections\":40,"
	    "\"ip_address\":\"1.2.3.4\",\"allowed_updates\":[\"message\"]}",
	    why), 0);
	/* Telegram may write the host in lower case */
	assert_int_equal(differs(&p, "{\"url\":\"https://BOT.example:8443/"
	    "hook\",\"max_connections\":40}", why), 0);
	assert_int_equal(differs(&p, "{\"url\":\"https://evil.example/x\","
	    "\"max_connections\":40}", why), 1);
	assert_string_equal(why, "its url is https://evil.example/x");
	assert_int_equal(differs(&p, "{\"url\":\"\",\"has_custom_certificate"
	    "\":false,\"pending_update_count\":0}", why), 1);
	assert_non_null(strstr(why, "no webhook is set"));
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"has_custom_certificate\":true}", why), 1);
	assert_string_equal(why, "a certificate was uploaded for it");
	p.cert_pem = "PEM";
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"has_custom_certificate\":false}", why), 1);
	assert_string_equal(why, "its uploaded certificate is gone");
	p.cert_pem = NULL;
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"max_connections\":100}", why), 1);
	assert_string_equal(why, "its max_connections is 100, not 40");
	p.ip_address = "1.2.3.4";
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"ip_address\":\"5.6.7.8\"}", why), 1);
	assert_string_equal(why, "its ip_address is 5.6.7.8, not 1.2.3.4");
	p.allowed_updates = "message, callback_query";
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"allowed_updates\":[\"callback_query\",\"message\"]}",
	    why), 0);
	assert_int_equal(differs(&p, "{\"url\":\"https://bot.example:8443/"
	    "hook\",\"allowed_updates\":[\"message\"]}", why), 1);
	assert_non_null(strstr(why, "allowed_updates"));
}

#define INFO(url) "{\"ok\":true,\"result\":{\"url\":\"" url "\"," \
	"\"has_custom_certificate\":false,\"pending_update_count\":0," \
	"\"max_connections\":40}}"

static void
test_thread_registers_again_when_not_ours(void **state)
{
	struct fake_botapi *f = fake_start();
	struct webhook_params p = { .url = "https://bot.example/hook",
		.secret_token = "s3cret", .max_connections = 40,
		.watch_ms = 50 };
	struct bot_identity id = { NULL };
	struct webhook *w;
	struct webhook_state st;
	int i;

	(void)state;
	atomic_store(&id.username, xstrdup("HelloBot"));
	/* ours; then another URL (something else called setWebhook);
	 * our setWebhook again meets a 429 first; then ours again */
	fake_script(f, "getWebhookInfo", 200, INFO("https://bot.example/hook"));
	fake_script(f, "getWebhookInfo", 200, INFO("https://evil.example/x"));
	fake_script(f, "setWebhook", 200, "{\"ok\":true,\"result\":true}");
	fake_script(f, "setWebhook", 429, "{\"ok\":false,\"error_code\":429,"
	    "\"description\":\"Too Many Requests: retry after 1\","
	    "\"parameters\":{\"retry_after\":1}}");
	for (int k = 0; k < 20; k++)
		fake_script(f, "getWebhookInfo", 200,
		    INFO("https://bot.example/hook"));
	w = webhook_start(botapi_new(f->url, TOKEN, 5000), &p, true, &id);
	/* while it waits out the 429: not registered, and why */
	for (i = 0; i < 500; i++) {
		webhook_state(w, &st);
		if (st.mismatch[0] != '\0')
			break;
		usleep(10000);
	}
	assert_string_equal(st.mismatch, "its url is https://evil.example/x");
	assert_false(st.registered);
	fake_wait(f, "setWebhook", 3);
	for (i = 0; i < 500; i++) {
		webhook_state(w, &st);
		if (st.registered && st.mismatch[0] == '\0')
			break;
		usleep(10000);
	}
	assert_true(st.registered);
	assert_string_equal(st.mismatch, "");
	assert_int_equal(fake_count(f, "setWebhook"), 3);
	assert_non_null(strstr(fake_body(f, "setWebhook", 2),
	    "name=\"url\"\r\n\r\nhttps://bot.example/hook\r\n"));
	webhook_stop(w);
	free(atomic_load(&id.username));
	fake_stop(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_webhook_fields),
		cmocka_unit_test(test_get_me_and_info),
		cmocka_unit_test(test_thread_retries_after_429),
		cmocka_unit_test(test_differs),
		cmocka_unit_test(test_thread_registers_again_when_not_ours),
	};

	return cmocka_run_group_tests_name("webhook", tests, NULL, NULL);
}
