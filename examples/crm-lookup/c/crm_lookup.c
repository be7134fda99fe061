/*
 * crm-lookup in C: given {"customer_id":"42"}, look the customer up in the internal CRM
 * through the worker's "crm" endpoint and return {"customer_id","name","tier","open_tickets"}.
 * The same task as ../main.go (Go), ../rust and ../assemblyscript, with the same outputs and
 * failure messages. Build with ./build.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "castellan.h"

/* MAX_ID_DIGITS keeps absurd inputs out of the CRM's logs. */
#define MAX_ID_DIGITS 18

/* quote_char formats the byte at id[i] the way Go's %q formats a rune, e.g. '.' or '\n'. */
static void quote_char(const char *id, size_t i, char out[16]) {
	unsigned char c = (unsigned char)id[i];
	const char *esc = NULL;
	switch (c) {
	case '\a': esc = "\\a"; break;
	case '\b': esc = "\\b"; break;
	case '\f': esc = "\\f"; break;
	case '\n': esc = "\\n"; break;
	case '\r': esc = "\\r"; break;
	case '\t': esc = "\\t"; break;
	case '\v': esc = "\\v"; break;
	case '\'': esc = "\\'"; break;
	case '\\': esc = "\\\\"; break;
	}
	if (esc) {
		snprintf(out, 16, "'%s'", esc);
	} else if (c < 0x20 || c == 0x7f) {
		snprintf(out, 16, "'\\x%02x'", c);
	} else if (c < 0x80) {
		snprintf(out, 16, "'%c'", c);
	} else {
		/* A multi-byte rune: copy its UTF-8 bytes. */
		size_t n = 1;
		while (n < 4 && ((unsigned char)id[i + n] & 0xC0) == 0x80) n++;
		out[0] = '\'';
		memcpy(out + 1, id + i, n);
		out[n + 1] = '\'';
		out[n + 2] = 0;
	}
}

static int validate_id(const char *id) {
	size_t n = strlen(id);
	if (n == 0)
		return castellan_fail("input field \"customer_id\" is missing or empty; want digits, e.g. {\"customer_id\":\"42\"}");
	if (n > MAX_ID_DIGITS)
		return castellan_failf("input field \"customer_id\" has %zu characters; want at most %d digits", n, MAX_ID_DIGITS);
	for (size_t i = 0; i < n; i++) {
		if (id[i] < '0' || id[i] > '9') {
			char q[16];
			quote_char(id, i, q);
			return castellan_failf("input field \"customer_id\" has %s at position %zu; want digits only, e.g. \"42\"", q, i);
		}
	}
	return 0;
}

static int lookup(const char *id) {
	char target[64];
	snprintf(target, sizeof target, "/api/customers/%s", id);
	int32_t status = 0;
	char *body = NULL;
	size_t len = 0;
	int32_t err = castellan_get("crm", target, &status, &body, &len);
	if (err < 0)
		return castellan_failf("looking up customer %s in the crm: castellan: GET crm %s: %s", id, target, castellan_strerror(err));
	if (status == 404) {
		free(body);
		return castellan_failf("customer %s not found", id);
	}
	if (status != 200) {
		free(body);
		return castellan_failf("looking up customer %s: the crm answered HTTP %d", id, (int)status);
	}

	char *got_id = castellan_json_string(body, len, "customer_id");
	char *name = castellan_json_string(body, len, "name");
	char *tier = castellan_json_string(body, len, "tier");
	long long tickets = 0;
	castellan_json_int(body, len, "open_tickets", &tickets);
	free(body);

	int rc = 0;
	if (!got_id || strcmp(got_id, id) != 0) {
		rc = castellan_failf("looking up customer %s: the crm returned customer \"%s\"", id, got_id ? got_id : "");
	} else {
		castellan_logf(CASTELLAN_INFO, "customer %s: tier %s, %lld open tickets", id, tier ? tier : "", tickets);
		castellan_buf out = {0};
		castellan_buf_str(&out, "{\"customer_id\":");
		castellan_buf_json_string(&out, got_id, strlen(got_id));
		castellan_buf_str(&out, ",\"name\":");
		castellan_buf_json_string(&out, name ? name : "", name ? strlen(name) : 0);
		castellan_buf_str(&out, ",\"tier\":");
		castellan_buf_json_string(&out, tier ? tier : "", tier ? strlen(tier) : 0);
		castellan_buf_printf(&out, ",\"open_tickets\":%lld}", tickets);
		if (out.oom) rc = castellan_fail("castellan: encoding output: out of memory");
		else castellan_output(out.data, out.len);
		castellan_buf_free(&out);
	}
	free(got_id);
	free(name);
	free(tier);
	return rc;
}

__attribute__((export_name("run"))) int run(void) {
	size_t len;
	const char *in = castellan_input(&len);
	if (!in || len == 0)
		return castellan_fail("castellan: decoding job input: the input is empty, want a JSON value");
	char *id = castellan_json_string(in, len, "customer_id");
	int rc = validate_id(id ? id : "");
	if (rc == 0) rc = lookup(id);
	free(id);
	return rc;
}
