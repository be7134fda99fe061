// The Castellan task SDK for AssemblyScript 0.28.
//
// A task is a module that exports `run(): i32`; the worker calls it once per job on a fresh
// instance. Write the task body as a function returning an error message, or null on success,
// and export run through handle():
//
//   import * as castellan from "@castellan/sdk/assembly";
//   export function run(): i32 { return castellan.handle(task); }
//   function task(): string | null { castellan.output(castellan.inputString()); return null; }
//
// Build with --use abort=<this file>/abort (so that an AssemblyScript abort fails the job
// through castellan_v1 instead of importing env.abort, which the sandbox refuses), and
// do not use Math.random or trace (they import env.seed and env.trace). See
// docs/writing-tasks.md.
//
// Policy violations (an endpoint or path the policy does not grant, a forbidden header, too
// many calls, too much output) never return to the task: the host ends the job at once.

// ---- the castellan_v1 host ABI (docs/abi.md) ----

@external("castellan_v1", "input_size")
declare function host_input_size(): i32;
@external("castellan_v1", "input_read")
declare function host_input_read(ptr: usize, len: i32): i32;
@external("castellan_v1", "output_write")
declare function host_output_write(ptr: usize, len: i32): i32;
@external("castellan_v1", "fail")
declare function host_fail(ptr: usize, len: i32): i32;
@external("castellan_v1", "log")
declare function host_log(level: i32, ptr: usize, len: i32): i32;
@external("castellan_v1", "http_request")
declare function host_http_request(
  ep: usize, epLen: i32, method: usize, methodLen: i32, target: usize, targetLen: i32,
  headers: usize, headersLen: i32, body: usize, bodyLen: i32): i32;
@external("castellan_v1", "http_status")
declare function host_http_status(h: i32): i32;
@external("castellan_v1", "http_header_size")
declare function host_http_header_size(h: i32): i32;
@external("castellan_v1", "http_header_read")
declare function host_http_header_read(h: i32, ptr: usize, len: i32): i32;
@external("castellan_v1", "http_body_read")
declare function host_http_body_read(h: i32, ptr: usize, len: i32): i32;
@external("castellan_v1", "http_close")
declare function host_http_close(h: i32): i32;

// ---- errors ----

export const E_INVALID: i32 = -1;
export const E_UPSTREAM: i32 = -2;
export const E_TOO_LARGE: i32 = -3;
export const E_BAD_HANDLE: i32 = -4;
export const E_TOO_MANY_OPEN: i32 = -5;
export const E_NOT_IN_JOB: i32 = -6;

/** Describes a host error code in the same words as the Go SDK. */
export function strerror(code: i32): string {
  switch (code) {
    case E_INVALID: return "invalid arguments (E_INVALID)";
    case E_UPSTREAM: return "endpoint unreachable or timed out (E_UPSTREAM)";
    case E_TOO_LARGE: return "response body larger than the endpoint allows (E_TOO_LARGE)";
    case E_BAD_HANDLE: return "response is not open (E_BAD_HANDLE)";
    case E_TOO_MANY_OPEN: return "too many open responses, close one first (E_TOO_MANY_OPEN)";
    case E_NOT_IN_JOB: return "called outside a job, e.g. from init (E_NOT_IN_JOB)";
  }
  return "unknown host error " + code.toString();
}

/** An HTTP error: what was being done ("GET crm /api/customers/42") and the host's code. */
export class HttpError {
  constructor(public what: string, public code: i32) {}
  toString(): string { return "castellan: " + this.what + ": " + strerror(this.code); }
}

// ---- entry, input, output, fail, log ----

/** Runs a task body: null means success (returns 0); a message fails the job (returns 1). */
export function handle(task: () => string | null): i32 {
  const err = task();
  if (err === null) return 0;
  fail(err.length > 0 ? err : "task failed with an empty error");
  return 1;
}

/** The job input (JSON) as bytes. */
export function input(): Uint8Array {
  const n = host_input_size();
  const buf = new Uint8Array(n > 0 ? n : 0);
  if (n > 0) {
    const got = host_input_read(buf.dataStart, n);
    return buf.subarray(0, got > 0 ? got : 0);
  }
  return buf;
}

/** The job input decoded as UTF-8. */
export function inputString(): string {
  const b = input();
  return String.UTF8.decodeUnsafe(b.dataStart, b.length);
}

/** Appends bytes to the job output. Past the output limit the host ends the job. */
export function outputBytes(b: Uint8Array): void {
  host_output_write(b.dataStart, b.length);
}

/** Appends a string, as UTF-8, to the job output. */
export function output(s: string): void {
  const b = String.UTF8.encode(s);
  host_output_write(changetype<usize>(b), b.byteLength);
}

/** Marks the job failed with msg; return non-zero from run afterwards (handle does). */
export function fail(msg: string): void {
  const b = String.UTF8.encode(msg);
  host_fail(changetype<usize>(b), b.byteLength);
}

export const DEBUG: i32 = 0;
export const INFO: i32 = 1;
export const WARN: i32 = 2;
export const ERROR: i32 = 3;

/** Writes one line to the worker's log (redacted, bounded by the task's log budget). */
export function log(level: i32, msg: string): void {
  if (level < DEBUG || level > ERROR) level = ERROR;
  const b = String.UTF8.encode(msg);
  host_log(level, changetype<usize>(b), b.byteLength);
}

/** The abort handler to pass with --use abort=...: fails the job with the message and traps. */
export function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  let m = "abort: " + (message !== null ? message : "");
  if (fileName !== null) m += " at " + fileName + ":" + line.toString() + ":" + column.toString();
  fail(m);
  unreachable();
}

// ---- scoped HTTP ----

/** A response: status, headers, and a body streamed from the host. Close it when done. */
export class Response {
  status: i32 = 0;
  /** The header block: "Name: value\n" lines; credential values are [REDACTED]. */
  headers: string = "";
  err: HttpError | null = null;
  private closed: bool = false;
  private done: bool = false;
  constructor(public handle: i32, public what: string) {}

  /** Returns the first value of a header, compared case-insensitively, or null. */
  header(name: string): string | null {
    const lines = this.headers.split("\n");
    const want = name.toLowerCase();
    for (let i = 0; i < lines.length; i++) {
      const c = lines[i].indexOf(":");
      if (c > 0 && lines[i].substring(0, c).toLowerCase() == want) return lines[i].substring(c + 1).trimStart();
    }
    return null;
  }

  /** Reads the next chunk of the body into buf: the count, 0 at the end, or an error code. */
  read(buf: Uint8Array): i32 {
    if (this.done || buf.length == 0) return 0;
    if (this.closed) return E_BAD_HANDLE;
    const n = host_http_body_read(this.handle, buf.dataStart, buf.length);
    if (n == 0) this.done = true;
    return n;
  }

  /** Reads the whole body and closes the response; null on error (see err). */
  bytes(): Uint8Array | null {
    let buf = new Uint8Array(32 << 10);
    let len = 0;
    while (true) {
      if (buf.length - len < (16 << 10)) {
        const nb = new Uint8Array(buf.length * 2);
        nb.set(buf.subarray(0, len));
        buf = nb;
      }
      const n = this.read(buf.subarray(len));
      if (n < 0) {
        this.err = new HttpError(this.what, n);
        this.close();
        return null;
      }
      if (n == 0) break;
      len += n;
    }
    this.close();
    return buf.subarray(0, len);
  }

  /** Reads the whole body as UTF-8 and closes the response; null on error (see err). */
  text(): string | null {
    const b = this.bytes();
    if (b === null) return null;
    return String.UTF8.decodeUnsafe(b.dataStart, b.length);
  }

  /** Releases the response on the host. Safe to call twice. */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      host_http_close(this.handle);
    }
  }
}

/** The result of a request: a response, or an error. */
export class Result {
  constructor(public response: Response | null, public error: HttpError | null) {}
}

/**
 * Sends a request to the logical endpoint (e.g. "crm"). path is relative to the endpoint's
 * base URL and starts with "/"; headers is a block of "Name: value\n" lines ("" for none).
 */
export function request(endpoint: string, method: string, path: string, headers: string = "", body: Uint8Array | null = null): Result {
  const what = method + " " + endpoint + " " + path;
  const ep = String.UTF8.encode(endpoint);
  const m = String.UTF8.encode(method);
  const p = String.UTF8.encode(path);
  const h = String.UTF8.encode(headers);
  const bptr: usize = body !== null ? body.dataStart : 0;
  const blen: i32 = body !== null ? body.length : 0;
  const handle = host_http_request(
    changetype<usize>(ep), ep.byteLength, changetype<usize>(m), m.byteLength,
    changetype<usize>(p), p.byteLength, changetype<usize>(h), h.byteLength, bptr, blen);
  if (handle < 0) return new Result(null, new HttpError(what, handle));
  const r = new Response(handle, what);
  const status = host_http_status(handle);
  if (status < 0) {
    r.close();
    return new Result(null, new HttpError(what, status));
  }
  r.status = status;
  const size = host_http_header_size(handle);
  if (size > 0) {
    const hb = new Uint8Array(size);
    const got = host_http_header_read(handle, hb.dataStart, size);
    if (got > 0) r.headers = String.UTF8.decodeUnsafe(hb.dataStart, got);
  }
  return new Result(r, null);
}

/** Sends a GET request. */
export function get(endpoint: string, path: string): Result {
  return request(endpoint, "GET", path);
}

// ---- JSON helpers ----

/** Returns s as a JSON string literal, escaped as Go's encoding/json does. */
export function jsonString(s: string): string {
  let out = "\"";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += "\\\"";
    else if (c == 0x5c) out += "\\\\";
    else if (c == 0x0a) out += "\\n";
    else if (c == 0x0d) out += "\\r";
    else if (c == 0x09) out += "\\t";
    else if (c < 0x20 || c == 0x3c || c == 0x3e || c == 0x26 || c == 0x2028 || c == 0x2029) {
      let hex = c.toString(16);
      while (hex.length < 4) hex = "0" + hex;
      out += "\\u" + hex;
    } else out += String.fromCharCode(c);
  }
  return out + "\"";
}

/** A minimal JSON scanner over a string: finds top-level fields, skips any value. */
class Scanner {
  i: i32 = 0;
  ok: bool = true;
  constructor(public s: string) {}

  ws(): void {
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i);
      if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
      this.i++;
    }
  }

  peek(): i32 { return this.i < this.s.length ? this.s.charCodeAt(this.i) : -1; }

  str(): string | null {
    if (this.peek() != 0x22) return null;
    this.i++;
    let out = "";
    while (this.i < this.s.length) {
      const c = this.s.charCodeAt(this.i++);
      if (c == 0x22) return out;
      if (c < 0x20) return null;
      if (c != 0x5c) { out += String.fromCharCode(c); continue; }
      if (this.i >= this.s.length) return null;
      const e = this.s.charCodeAt(this.i++);
      if (e == 0x22) out += "\"";
      else if (e == 0x5c) out += "\\";
      else if (e == 0x2f) out += "/";
      else if (e == 0x62) out += "\b";
      else if (e == 0x66) out += "\f";
      else if (e == 0x6e) out += "\n";
      else if (e == 0x72) out += "\r";
      else if (e == 0x74) out += "\t";
      else if (e == 0x75) {
        if (this.i + 4 > this.s.length) return null;
        const v = I32.parseInt(this.s.substr(this.i, 4), 16);
        this.i += 4;
        out += String.fromCharCode(v);
      } else return null;
    }
    return null;
  }

  skip(depth: i32): bool {
    if (depth > 64) return false;
    this.ws();
    const c = this.peek();
    if (c == 0x22) return this.str() !== null;
    if (c == 0x7b || c == 0x5b) {
      const close = c == 0x7b ? 0x7d : 0x5d;
      this.i++;
      this.ws();
      if (this.peek() == close) { this.i++; return true; }
      while (true) {
        if (c == 0x7b) {
          this.ws();
          if (this.str() === null) return false;
          this.ws();
          if (this.peek() != 0x3a) return false;
          this.i++;
        }
        if (!this.skip(depth + 1)) return false;
        this.ws();
        const d = this.peek();
        if (d == 0x2c) { this.i++; continue; }
        if (d == close) { this.i++; return true; }
        return false;
      }
    }
    const start = this.i;
    while (this.i < this.s.length) {
      const d = this.s.charCodeAt(this.i);
      if (!((d >= 0x30 && d <= 0x39) || (d >= 0x61 && d <= 0x7a) || d == 0x2b || d == 0x2d || d == 0x2e || d == 0x45)) break;
      this.i++;
    }
    return this.i > start;
  }

  /** Positions the scanner at the value of key in the top-level object. */
  field(key: string): bool {
    this.ws();
    if (this.peek() != 0x7b) return false;
    this.i++;
    this.ws();
    if (this.peek() == 0x7d) return false;
    while (true) {
      this.ws();
      const k = this.str();
      if (k === null) return false;
      this.ws();
      if (this.peek() != 0x3a) return false;
      this.i++;
      this.ws();
      if (k == key) return true;
      if (!this.skip(0)) return false;
      this.ws();
      if (this.peek() != 0x2c) return false;
      this.i++;
    }
    return false;
  }
}

/** The string field key of the top-level JSON object, or null if absent or not a string. */
export function jsonGetString(json: string, key: string): string | null {
  const s = new Scanner(json);
  if (!s.field(key)) return null;
  return s.str();
}

/** The integer field key of the top-level JSON object, or defaultValue. */
export function jsonGetInt(json: string, key: string, defaultValue: i64 = 0): i64 {
  const s = new Scanner(json);
  if (!s.field(key)) return defaultValue;
  let neg = false;
  if (s.peek() == 0x2d) { neg = true; s.i++; }
  let v: i64 = 0;
  let digits = 0;
  while (s.peek() >= 0x30 && s.peek() <= 0x39) {
    v = v * 10 + <i64>(s.peek() - 0x30);
    s.i++;
    digits++;
  }
  if (digits == 0 || digits > 18) return defaultValue;
  return neg ? -v : v;
}
