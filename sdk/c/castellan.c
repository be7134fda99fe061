/* castellan.c: the Castellan task SDK for C. See castellan.h. */
#include "castellan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("castellan_v1"), import_name(#name)))

IMPORT(input_size) int32_t cas_input_size(void);
IMPORT(input_read) int32_t cas_input_read(void *ptr, int32_t len);
IMPORT(output_write) int32_t cas_output_write(const void *ptr, int32_t len);
IMPORT(fail) int32_t cas_fail(const void *ptr, int32_t len);
IMPORT(log) int32_t cas_log(int32_t level, const void *ptr, int32_t len);
IMPORT(http_request)
int32_t cas_http_request(const void *ep, int32_t ep_len, const void *method, int32_t method_len,
                         const void *target, int32_t target_len, const void *headers, int32_t headers_len,
                         const void *body, int32_t body_len);
IMPORT(http_status) int32_t cas_http_status(int32_t h);
IMPORT(http_header_size) int32_t cas_http_header_size(int32_t h);
IMPORT(http_header_read) int32_t cas_http_header_read(int32_t h, void *ptr, int32_t len);
IMPORT(http_body_read) int32_t cas_http_body_read(int32_t h, void *ptr, int32_t len);
IMPORT(http_close) int32_t cas_http_close(int32_t h);

const char *castellan_strerror(int32_t code) {
	switch (code) {
	case CASTELLAN_E_INVALID: return "invalid arguments (E_INVALID)";
	case CASTELLAN_E_UPSTREAM: return "endpoint unreachable or timed out (E_UPSTREAM)";
	case CASTELLAN_E_TOO_LARGE: return "response body larger than the endpoint allows (E_TOO_LARGE)";
	case CASTELLAN_E_BAD_HANDLE: return "response is not open (E_BAD_HANDLE)";
	case CASTELLAN_E_TOO_MANY_OPEN: return "too many open responses, close one first (E_TOO_MANY_OPEN)";
	case CASTELLAN_E_NOT_IN_JOB: return "called outside a job, e.g. from init (E_NOT_IN_JOB)";
	case CASTELLAN_E_NO_MEMORY: return "out of memory in the task";
	}
	return "unknown host error";
}

/* ---- input and output ---- */

static char *input_cache;
static size_t input_len;

const char *castellan_input(size_t *len) {
	if (!input_cache) {
		int32_t n = cas_input_size();
		if (n < 0) n = 0;
		input_cache = malloc((size_t)n + 1);
		if (!input_cache) return NULL;
		int32_t got = n > 0 ? cas_input_read(input_cache, n) : 0;
		input_len = got > 0 ? (size_t)got : 0;
		input_cache[input_len] = 0;
	}
	if (len) *len = input_len;
	return input_cache;
}

void castellan_output(const void *data, size_t len) { cas_output_write(data, (int32_t)len); }

void castellan_output_str(const char *s) { castellan_output(s, strlen(s)); }

int castellan_fail(const char *msg) {
	cas_fail(msg, (int32_t)strlen(msg));
	return 1;
}

/* vformat returns a malloc'd formatted string, or NULL. */
static char *vformat(const char *fmt, va_list ap) {
	va_list ap2;
	va_copy(ap2, ap);
	int n = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (n < 0) return NULL;
	char *s = malloc((size_t)n + 1);
	if (s) vsnprintf(s, (size_t)n + 1, fmt, ap);
	return s;
}

int castellan_failf(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	char *s = vformat(fmt, ap);
	va_end(ap);
	castellan_fail(s ? s : fmt);
	free(s);
	return 1;
}

void castellan_log(int level, const char *msg) {
	if (level < CASTELLAN_DEBUG || level > CASTELLAN_ERROR) level = CASTELLAN_ERROR;
	cas_log(level, msg, (int32_t)strlen(msg));
}

void castellan_logf(int level, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	char *s = vformat(fmt, ap);
	va_end(ap);
	castellan_log(level, s ? s : fmt);
	free(s);
}

/* ---- scoped HTTP ---- */

int32_t castellan_http_request(const char *endpoint, const char *method, const char *target,
                               const char *headers, const void *body, size_t body_len) {
	if (!headers) headers = "";
	return cas_http_request(endpoint, (int32_t)strlen(endpoint), method, (int32_t)strlen(method),
	                        target, (int32_t)strlen(target), headers, (int32_t)strlen(headers),
	                        body, body ? (int32_t)body_len : 0);
}

int32_t castellan_http_status(int32_t handle) { return cas_http_status(handle); }

char *castellan_http_headers(int32_t handle) {
	int32_t n = cas_http_header_size(handle);
	if (n < 0) return NULL;
	char *s = malloc((size_t)n + 1);
	if (!s) return NULL;
	int32_t got = cas_http_header_read(handle, s, n);
	if (got < 0) {
		free(s);
		return NULL;
	}
	s[got] = 0;
	return s;
}

int32_t castellan_http_read(int32_t handle, void *buf, size_t len) {
	return cas_http_body_read(handle, buf, (int32_t)len);
}

/* readChunk is the least free space offered to the host per read, as in the Go SDK. */
#define READ_CHUNK (32 * 1024)

char *castellan_http_read_all(int32_t handle, size_t *len, int32_t *err) {
	size_t cap = READ_CHUNK, n = 0;
	char *buf = malloc(cap + 1);
	if (!buf) {
		if (err) *err = CASTELLAN_E_NO_MEMORY;
		return NULL;
	}
	for (;;) {
		if (cap - n < READ_CHUNK / 2) {
			char *nb = realloc(buf, cap * 2 + 1);
			if (!nb) {
				free(buf);
				if (err) *err = CASTELLAN_E_NO_MEMORY;
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		int32_t r = cas_http_body_read(handle, buf + n, (int32_t)(cap - n));
		if (r < 0) {
			free(buf);
			if (err) *err = r;
			return NULL;
		}
		if (r == 0) break;
		n += (size_t)r;
	}
	buf[n] = 0;
	if (len) *len = n;
	if (err) *err = 0;
	return buf;
}

int32_t castellan_http_close(int32_t handle) { return cas_http_close(handle); }

int32_t castellan_get(const char *endpoint, const char *target, int32_t *status, char **body, size_t *body_len) {
	*body = NULL;
	int32_t h = castellan_http_request(endpoint, "GET", target, NULL, NULL, 0);
	if (h < 0) return h;
	int32_t st = cas_http_status(h);
	if (st < 0) {
		cas_http_close(h);
		return st;
	}
	int32_t err = 0;
	*body = castellan_http_read_all(h, body_len, &err);
	cas_http_close(h);
	if (!*body) return err;
	*status = st;
	return 0;
}

/* ---- JSON helpers ---- */

static int buf_grow(castellan_buf *b, size_t extra) {
	if (b->oom) return 0;
	if (b->len + extra + 1 <= b->cap) return 1;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + extra + 1) cap *= 2;
	char *nd = realloc(b->data, cap);
	if (!nd) {
		b->oom = 1;
		return 0;
	}
	b->data = nd;
	b->cap = cap;
	return 1;
}

void castellan_buf_append(castellan_buf *b, const void *data, size_t len) {
	if (!buf_grow(b, len)) return;
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = 0;
}

void castellan_buf_str(castellan_buf *b, const char *s) { castellan_buf_append(b, s, strlen(s)); }

void castellan_buf_printf(castellan_buf *b, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	char *s = vformat(fmt, ap);
	va_end(ap);
	if (!s) {
		b->oom = 1;
		return;
	}
	castellan_buf_str(b, s);
	free(s);
}

void castellan_buf_json_string(castellan_buf *b, const char *s, size_t len) {
	static const char hex[] = "0123456789abcdef";
	castellan_buf_append(b, "\"", 1);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[7];
		switch (c) {
		case '"': castellan_buf_append(b, "\\\"", 2); continue;
		case '\\': castellan_buf_append(b, "\\\\", 2); continue;
		case '\n': castellan_buf_append(b, "\\n", 2); continue;
		case '\r': castellan_buf_append(b, "\\r", 2); continue;
		case '\t': castellan_buf_append(b, "\\t", 2); continue;
		}
		if (c < 0x20 || c == '<' || c == '>' || c == '&') {
			/* Go's encoding/json escapes HTML characters too. */
			esc[0] = '\\', esc[1] = 'u', esc[2] = '0', esc[3] = '0';
			esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
			castellan_buf_append(b, esc, 6);
			continue;
		}
		castellan_buf_append(b, &s[i], 1);
	}
	castellan_buf_append(b, "\"", 1);
}

void castellan_buf_free(castellan_buf *b) {
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->oom = 0;
}

/* A minimal JSON scanner: enough to find a top-level field and skip any value. */
typedef struct {
	const char *p, *end;
} scan;

static void ws(scan *s) {
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int hexval(char c) {
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

/* str parses a string literal at s->p; with out set, appends its unescaped UTF-8 to out. */
static int str(scan *s, castellan_buf *out) {
	if (s->p >= s->end || *s->p != '"') return 0;
	s->p++;
	while (s->p < s->end) {
		unsigned char c = (unsigned char)*s->p++;
		if (c == '"') return 1;
		if (c < 0x20) return 0;
		if (c != '\\') {
			if (out) castellan_buf_append(out, &c, 1);
			continue;
		}
		if (s->p >= s->end) return 0;
		char e = *s->p++, ch;
		switch (e) {
		case '"': ch = '"'; break;
		case '\\': ch = '\\'; break;
		case '/': ch = '/'; break;
		case 'b': ch = '\b'; break;
		case 'f': ch = '\f'; break;
		case 'n': ch = '\n'; break;
		case 'r': ch = '\r'; break;
		case 't': ch = '\t'; break;
		case 'u': {
			if (s->end - s->p < 4) return 0;
			unsigned cp = 0;
			for (int i = 0; i < 4; i++) {
				int h = hexval(s->p[i]);
				if (h < 0) return 0;
				cp = cp * 16 + (unsigned)h;
			}
			s->p += 4;
			if (cp >= 0xD800 && cp < 0xDC00 && s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u') {
				unsigned lo = 0;
				int ok = 1;
				for (int i = 0; i < 4; i++) {
					int h = hexval(s->p[2 + i]);
					if (h < 0) ok = 0;
					lo = lo * 16 + (unsigned)(h < 0 ? 0 : h);
				}
				if (ok && lo >= 0xDC00 && lo < 0xE000) {
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					s->p += 6;
				}
			}
			if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
			unsigned char u[4];
			size_t n;
			if (cp < 0x80) u[0] = (unsigned char)cp, n = 1;
			else if (cp < 0x800) u[0] = (unsigned char)(0xC0 | cp >> 6), u[1] = (unsigned char)(0x80 | (cp & 63)), n = 2;
			else if (cp < 0x10000) u[0] = (unsigned char)(0xE0 | cp >> 12), u[1] = (unsigned char)(0x80 | ((cp >> 6) & 63)), u[2] = (unsigned char)(0x80 | (cp & 63)), n = 3;
			else u[0] = (unsigned char)(0xF0 | cp >> 18), u[1] = (unsigned char)(0x80 | ((cp >> 12) & 63)), u[2] = (unsigned char)(0x80 | ((cp >> 6) & 63)), u[3] = (unsigned char)(0x80 | (cp & 63)), n = 4;
			if (out) castellan_buf_append(out, u, n);
			continue;
		}
		default: return 0;
		}
		if (out) castellan_buf_append(out, &ch, 1);
	}
	return 0;
}

/* skip skips one JSON value of any kind. */
static int skip(scan *s, int depth) {
	if (depth > 64) return 0;
	ws(s);
	if (s->p >= s->end) return 0;
	char c = *s->p;
	if (c == '"') return str(s, NULL);
	if (c == '{' || c == '[') {
		char close = c == '{' ? '}' : ']';
		s->p++;
		ws(s);
		if (s->p < s->end && *s->p == close) {
			s->p++;
			return 1;
		}
		for (;;) {
			if (c == '{') {
				ws(s);
				if (!str(s, NULL)) return 0;
				ws(s);
				if (s->p >= s->end || *s->p++ != ':') return 0;
			}
			if (!skip(s, depth + 1)) return 0;
			ws(s);
			if (s->p >= s->end) return 0;
			if (*s->p == ',') {
				s->p++;
				continue;
			}
			if (*s->p == close) {
				s->p++;
				return 1;
			}
			return 0;
		}
	}
	const char *start = s->p;
	while (s->p < s->end && (strchr("+-.eE", *s->p) || (*s->p >= '0' && *s->p <= '9') || (*s->p >= 'a' && *s->p <= 'z'))) s->p++;
	return s->p > start;
}

/* field positions s at the value of key in the top-level object. */
static int field(scan *s, const char *key) {
	size_t klen = strlen(key);
	ws(s);
	if (s->p >= s->end || *s->p++ != '{') return 0;
	ws(s);
	if (s->p < s->end && *s->p == '}') return 0;
	castellan_buf k = {0};
	for (;;) {
		ws(s);
		k.len = 0;
		if (!str(s, &k) || k.oom) break;
		ws(s);
		if (s->p >= s->end || *s->p++ != ':') break;
		ws(s);
		if (k.len == klen && memcmp(k.data ? k.data : "", key, klen) == 0) {
			castellan_buf_free(&k);
			return 1;
		}
		if (!skip(s, 0)) break;
		ws(s);
		if (s->p >= s->end || *s->p++ != ',') break;
	}
	castellan_buf_free(&k);
	return 0;
}

char *castellan_json_string(const char *json, size_t len, const char *key) {
	scan s = {json, json + len};
	if (!field(&s, key)) return NULL;
	castellan_buf out = {0};
	castellan_buf_append(&out, "", 0);
	if (!str(&s, &out) || out.oom) {
		castellan_buf_free(&out);
		return NULL;
	}
	return out.data;
}

int castellan_json_int(const char *json, size_t len, const char *key, long long *out) {
	scan s = {json, json + len};
	if (!field(&s, key)) return -1;
	int neg = 0;
	if (s.p < s.end && *s.p == '-') neg = 1, s.p++;
	if (s.p >= s.end || *s.p < '0' || *s.p > '9') return -1;
	long long v = 0;
	while (s.p < s.end && *s.p >= '0' && *s.p <= '9') {
		if (v > (9223372036854775807LL - 9) / 10) return -1;
		v = v * 10 + (*s.p++ - '0');
	}
	if (s.p < s.end && (*s.p == '.' || *s.p == 'e' || *s.p == 'E')) return -1;
	*out = neg ? -v : v;
	return 0;
}
