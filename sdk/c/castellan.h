/*
 * castellan.h: the Castellan task SDK for C (clang --target=wasm32-wasi).
 *
 * A task is a WASI reactor that exports `int run(void)`; the worker calls it once per job on a
 * fresh instance. Return 0 for success. To fail, call castellan_fail (or castellan_failf) and
 * return non-zero. The functions below wrap the castellan_v1 host ABI (docs/abi.md) and add
 * the small helpers C lacks: whole-input and whole-body reads, a JSON string escaper and a
 * flat JSON object field reader.
 *
 * Build (see docs/writing-tasks.md):
 *   clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wl,--export=run \
 *         -I sdk/c task.c sdk/c/castellan.c -o task.wasm
 *
 * Policy violations (an endpoint or path the policy does not grant, a forbidden header, too
 * many calls, too much output) never return here: the host ends the job at once.
 */
#ifndef CASTELLAN_H
#define CASTELLAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes returned by the host (docs/abi.md). */
enum {
	CASTELLAN_E_INVALID = -1,       /* malformed arguments */
	CASTELLAN_E_UPSTREAM = -2,      /* endpoint unreachable, reset, or timed out: may retry */
	CASTELLAN_E_TOO_LARGE = -3,     /* response body over the endpoint's max_response_bytes */
	CASTELLAN_E_BAD_HANDLE = -4,    /* no open response with this handle */
	CASTELLAN_E_TOO_MANY_OPEN = -5, /* 8 responses open at once: close one first */
	CASTELLAN_E_NOT_IN_JOB = -6,    /* called outside a job (from a constructor) */
	CASTELLAN_E_NO_MEMORY = -100    /* SDK-side: malloc failed (never returned by the host) */
};

/* Log levels. */
enum {
	CASTELLAN_DEBUG = 0,
	CASTELLAN_INFO = 1,
	CASTELLAN_WARN = 2,
	CASTELLAN_ERROR = 3
};

/* castellan_strerror describes an error code in the same words as the Go SDK, e.g.
 * "endpoint unreachable or timed out (E_UPSTREAM)". */
const char *castellan_strerror(int32_t code);

/* ---- input and output ---- */

/* castellan_input returns the job input (JSON), NUL-terminated for convenience, and its
 * length in *len (may be NULL). It is read once and cached; do not free it. Returns NULL only
 * if malloc fails. */
const char *castellan_input(size_t *len);

/* castellan_output appends bytes to the job output. Past the task's output limit the host ends
 * the job (output_too_large) and does not return. */
void castellan_output(const void *data, size_t len);
void castellan_output_str(const char *s);

/* castellan_fail marks the job failed with msg (replacing an earlier message). Return non-zero
 * from run afterwards. castellan_failf formats like printf. Both return 1, so that
 * `return castellan_failf(...);` reads naturally. */
int castellan_fail(const char *msg);
int castellan_failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* castellan_log writes one line to the worker's log (redacted, bounded by the task's log
 * budget). castellan_logf formats like printf. */
void castellan_log(int level, const char *msg);
void castellan_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- scoped HTTP ---- */

/* castellan_http_request sends a request to the logical endpoint (e.g. "crm"). target is a
 * path relative to the endpoint's base URL ("/api/customers/42?x=1"); headers is a block of
 * "Name: value\n" lines or NULL; body may be NULL. Returns a response handle (>= 1) or a
 * negative error code (CASTELLAN_E_UPSTREAM, CASTELLAN_E_TOO_MANY_OPEN, ...). Close every
 * handle with castellan_http_close. */
int32_t castellan_http_request(const char *endpoint, const char *method, const char *target,
                               const char *headers, const void *body, size_t body_len);

/* castellan_http_status returns the HTTP status code, or an error code. */
int32_t castellan_http_status(int32_t handle);

/* castellan_http_headers returns the response header block ("Name: value\n" lines, credential
 * values replaced by [REDACTED]), NUL-terminated and malloc'd (free it), or NULL on error. */
char *castellan_http_headers(int32_t handle);

/* castellan_http_read reads the next chunk of the body into buf: the count, 0 at the end, or
 * CASTELLAN_E_TOO_LARGE / CASTELLAN_E_UPSTREAM. */
int32_t castellan_http_read(int32_t handle, void *buf, size_t len);

/* castellan_http_read_all reads the rest of the body into a malloc'd, NUL-terminated buffer
 * (free it) and stores its length in *len. On error it returns NULL and stores the error code
 * in *err (err and len may be NULL). */
char *castellan_http_read_all(int32_t handle, size_t *len, int32_t *err);

/* castellan_http_close releases the response: 0 or CASTELLAN_E_BAD_HANDLE. */
int32_t castellan_http_close(int32_t handle);

/* castellan_get is a convenience GET: on success (return 0) *status holds the status code and
 * *body a malloc'd, NUL-terminated body (free it), and the response is closed. On failure it
 * returns the error code and closes the response. */
int32_t castellan_get(const char *endpoint, const char *target, int32_t *status, char **body, size_t *body_len);

/* ---- JSON helpers ---- */

/* A growable byte buffer for building output. Zero-initialise it; free with castellan_buf_free. */
typedef struct {
	char *data;
	size_t len, cap;
	int oom; /* set when an append failed for lack of memory */
} castellan_buf;

void castellan_buf_append(castellan_buf *b, const void *data, size_t len);
void castellan_buf_str(castellan_buf *b, const char *s);
void castellan_buf_printf(castellan_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* castellan_buf_json_string appends s as a JSON string literal, quotes included, escaped as
 * Go's encoding/json does (so outputs compare equal across SDKs). */
void castellan_buf_json_string(castellan_buf *b, const char *s, size_t len);
void castellan_buf_free(castellan_buf *b);

/* castellan_json_string reads the string field `key` of the JSON object in json (top level
 * only) into a malloc'd, NUL-terminated, unescaped string (free it). Returns NULL when the
 * field is absent, not a string, or the JSON is malformed. */
char *castellan_json_string(const char *json, size_t len, const char *key);

/* castellan_json_int reads the integer field `key` of the top-level object into *out.
 * Returns 0 on success, -1 if absent, not an integer, or out of range. */
int castellan_json_int(const char *json, size_t len, const char *key, long long *out);

#ifdef __cplusplus
}
#endif

#endif /* CASTELLAN_H */
