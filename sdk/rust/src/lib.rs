//! The Castellan task SDK for Rust.
//!
//! A task is a WASI reactor (`--crate-type cdylib`, target `wasm32-wasi`) that exports
//! `run() -> i32`; the worker calls it once per job on a fresh instance. Write the task as a
//! function returning `Result<(), String>` and export it through [`handle`]:
//!
//! ```ignore
//! #[no_mangle]
//! pub extern "C" fn run() -> i32 {
//!     castellan::handle(|| {
//!         let input = castellan::input();
//!         castellan::output(&input);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! The crate wraps the castellan_v1 host ABI (docs/abi.md) and has no dependencies beyond
//! `std`, so it builds with Debian's rustc 1.63 without a registry. It adds a small JSON
//! module ([`json`]) because serde is not available offline.
//!
//! Policy violations (an endpoint or path the policy does not grant, a forbidden header, too
//! many calls, too much output) never return to the task: the host ends the job at once, so a
//! task cannot probe the policy.

use std::fmt;
use std::io;

pub mod json;

mod sys {
    #[cfg(target_arch = "wasm32")]
    #[link(wasm_import_module = "castellan_v1")]
    extern "C" {
        pub fn input_size() -> i32;
        pub fn input_read(ptr: *mut u8, len: i32) -> i32;
        pub fn output_write(ptr: *const u8, len: i32) -> i32;
        pub fn fail(ptr: *const u8, len: i32) -> i32;
        pub fn log(level: i32, ptr: *const u8, len: i32) -> i32;
        pub fn http_request(
            endpoint_ptr: *const u8,
            endpoint_len: i32,
            method_ptr: *const u8,
            method_len: i32,
            target_ptr: *const u8,
            target_len: i32,
            headers_ptr: *const u8,
            headers_len: i32,
            body_ptr: *const u8,
            body_len: i32,
        ) -> i32;
        pub fn http_status(handle: i32) -> i32;
        pub fn http_header_size(handle: i32) -> i32;
        pub fn http_header_read(handle: i32, ptr: *mut u8, len: i32) -> i32;
        pub fn http_body_read(handle: i32, ptr: *mut u8, len: i32) -> i32;
        pub fn http_close(handle: i32) -> i32;
    }

    // Off wasm (e.g. `cargo test` on the build machine) there is no host: every call reports
    // "not in a job", so pure helpers such as the json module stay testable natively.
    #[cfg(not(target_arch = "wasm32"))]
    mod native {
        pub unsafe fn input_size() -> i32 { 0 }
        pub unsafe fn input_read(_: *mut u8, _: i32) -> i32 { 0 }
        pub unsafe fn output_write(_: *const u8, _: i32) -> i32 { 0 }
        pub unsafe fn fail(_: *const u8, _: i32) -> i32 { 0 }
        pub unsafe fn log(_: i32, _: *const u8, _: i32) -> i32 { 0 }
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn http_request(
            _: *const u8, _: i32, _: *const u8, _: i32, _: *const u8, _: i32,
            _: *const u8, _: i32, _: *const u8, _: i32,
        ) -> i32 { -6 }
        pub unsafe fn http_status(_: i32) -> i32 { -4 }
        pub unsafe fn http_header_size(_: i32) -> i32 { -4 }
        pub unsafe fn http_header_read(_: i32, _: *mut u8, _: i32) -> i32 { -4 }
        pub unsafe fn http_body_read(_: i32, _: *mut u8, _: i32) -> i32 { -4 }
        pub unsafe fn http_close(_: i32) -> i32 { -4 }
    }
    #[cfg(not(target_arch = "wasm32"))]
    pub use native::*;
}

/// Runs a task body and turns its result into the value `run` returns: `Ok` is 0; `Err(msg)`
/// fails the job with `msg` and returns 1. A panic fails the job with the panic message.
pub fn handle<F: FnOnce() -> Result<(), String> + std::panic::UnwindSafe>(f: F) -> i32 {
    match std::panic::catch_unwind(f) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            let msg = if msg.is_empty() { "task failed with an empty error".to_string() } else { msg };
            fail(&msg);
            1
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_string());
            fail(&format!("panic: {}", what));
            1
        }
    }
}

/// Returns the job input: JSON that the control plane validated against the task's schema.
pub fn input() -> Vec<u8> {
    let n = unsafe { sys::input_size() };
    if n <= 0 {
        return Vec::new();
    }
    let mut buf = vec![0u8; n as usize];
    let got = unsafe { sys::input_read(buf.as_mut_ptr(), n) };
    buf.truncate(got.max(0) as usize);
    buf
}

/// Appends bytes to the job output. Past the task's output limit the host ends the job
/// (outcome output_too_large) and does not return.
pub fn output(b: &[u8]) {
    unsafe { sys::output_write(b.as_ptr(), b.len() as i32) };
}

/// Marks the job failed with `msg` (replacing any earlier message). Return non-zero from
/// `run` afterwards, or use [`handle`], which does both.
pub fn fail(msg: &str) {
    unsafe { sys::fail(msg.as_ptr(), msg.len() as i32) };
}

/// A log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

/// Writes one line to the worker's log, tagged with task and job, redacted, and bounded by
/// the task's log budget (lines past it are dropped).
pub fn log(level: Level, msg: &str) {
    unsafe { sys::log(level as i32, msg.as_ptr(), msg.len() as i32) };
}

/// An error code returned by the host. Its Display text is the same as the Go SDK's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// Malformed arguments, such as a header line without a colon.
    Invalid,
    /// The endpoint could not be reached, reset the connection, or timed out: may retry.
    Upstream,
    /// The response body exceeded the endpoint's max_response_bytes.
    TooLarge,
    /// No open response with this handle.
    BadHandle,
    /// 8 responses are already open; close one first.
    TooManyOpen,
    /// Called outside a job.
    NotInJob,
    /// A code this SDK does not know.
    Unknown(i32),
}

impl Errno {
    fn from_code(c: i32) -> Errno {
        match c {
            -1 => Errno::Invalid,
            -2 => Errno::Upstream,
            -3 => Errno::TooLarge,
            -4 => Errno::BadHandle,
            -5 => Errno::TooManyOpen,
            -6 => Errno::NotInJob,
            c => Errno::Unknown(c),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Errno::Invalid => f.write_str("invalid arguments (E_INVALID)"),
            Errno::Upstream => f.write_str("endpoint unreachable or timed out (E_UPSTREAM)"),
            Errno::TooLarge => f.write_str("response body larger than the endpoint allows (E_TOO_LARGE)"),
            Errno::BadHandle => f.write_str("response is not open (E_BAD_HANDLE)"),
            Errno::TooManyOpen => f.write_str("too many open responses, close one first (E_TOO_MANY_OPEN)"),
            Errno::NotInJob => f.write_str("called outside a job, e.g. from init (E_NOT_IN_JOB)"),
            Errno::Unknown(c) => write!(f, "unknown host error {}", c),
        }
    }
}

impl std::error::Error for Errno {}

/// An HTTP error: what was being done, and the host's error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// "METHOD endpoint target", e.g. "GET crm /api/customers/42".
    pub what: String,
    pub errno: Errno,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "castellan: {}: {}", self.what, self.errno)
    }
}

impl std::error::Error for HttpError {}

/// An internal HTTP API the policy lets the task call, by its logical name (e.g. "crm"). The
/// task never sees its URL or credential: the host adds them.
#[derive(Clone, Debug)]
pub struct Endpoint {
    name: String,
}

/// Returns the endpoint the policy calls `name`. No I/O happens until a request is sent.
pub fn endpoint(name: &str) -> Endpoint {
    Endpoint { name: name.to_string() }
}

/// One request. `path` is relative to the endpoint's base URL and starts with "/".
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Extra headers. Authorization, Cookie, Host, hop-by-hop and the endpoint's credential
    /// header are refused by the host (the job is denied).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl Endpoint {
    /// Sends a GET request for `path`.
    pub fn get(&self, path: &str) -> Result<Response, HttpError> {
        self.send(&Request { method: "GET", path, ..Default::default() })
    }

    /// Sends a POST request with a body and Content-Type.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Result<Response, HttpError> {
        let h = [("Content-Type", content_type)];
        self.send(&Request { method: "POST", path, headers: &h, body })
    }

    /// Sends `req` and returns the response with status and headers read; the body streams
    /// from the host as it is read (the response implements `std::io::Read`).
    pub fn send(&self, req: &Request) -> Result<Response, HttpError> {
        let method = if req.method.is_empty() { "GET".to_string() } else { req.method.to_ascii_uppercase() };
        let what = format!("{} {} {}", method, self.name, req.path);
        let err = |errno| HttpError { what: what.clone(), errno };
        let mut block = String::new();
        for (k, v) in req.headers {
            if k.is_empty() || k.contains(|c: char| c == ':' || c <= ' ') || v.contains(|c| c == '\r' || c == '\n') {
                return Err(err(Errno::Invalid));
            }
            block.push_str(k);
            block.push_str(": ");
            block.push_str(v);
            block.push('\n');
        }
        let h = unsafe {
            sys::http_request(
                self.name.as_ptr(),
                self.name.len() as i32,
                method.as_ptr(),
                method.len() as i32,
                req.path.as_ptr(),
                req.path.len() as i32,
                block.as_ptr(),
                block.len() as i32,
                req.body.as_ptr(),
                req.body.len() as i32,
            )
        };
        if h < 0 {
            return Err(err(Errno::from_code(h)));
        }
        let mut resp = Response { handle: h, status: 0, headers: Vec::new(), what: what.clone(), done: false, closed: false };
        let status = unsafe { sys::http_status(h) };
        if status < 0 {
            return Err(err(Errno::from_code(status)));
        }
        resp.status = status as u16;
        let size = unsafe { sys::http_header_size(h) };
        if size < 0 {
            return Err(err(Errno::from_code(size)));
        }
        let mut buf = vec![0u8; size as usize];
        let n = unsafe { sys::http_header_read(h, buf.as_mut_ptr(), size) };
        if n < 0 {
            return Err(err(Errno::from_code(n)));
        }
        buf.truncate(n as usize);
        for line in String::from_utf8_lossy(&buf).lines() {
            if let Some((k, v)) = line.split_once(':') {
                resp.headers.push((k.to_string(), v.trim_start().to_string()));
            }
        }
        Ok(resp)
    }
}

/// A response. Dropping it closes it on the host (at most 8 may be open at once).
#[derive(Debug)]
pub struct Response {
    handle: i32,
    /// The HTTP status code.
    pub status: u16,
    /// Response headers in order; Set-Cookie and hop-by-hop headers are removed and
    /// credential values replaced by [REDACTED] by the host.
    pub headers: Vec<(String, String)>,
    what: String,
    done: bool,
    closed: bool,
}

/// The least free space offered to the host per read, as in the Go SDK.
const READ_CHUNK: usize = 32 << 10;

impl Response {
    /// Returns the first value of a header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Reads the next chunk of the body into `buf`: the count, 0 at the end.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.closed {
            return Err(HttpError { what: self.what.clone(), errno: Errno::BadHandle });
        }
        let n = unsafe { sys::http_body_read(self.handle, buf.as_mut_ptr(), buf.len() as i32) };
        if n < 0 {
            return Err(HttpError { what: self.what.clone(), errno: Errno::from_code(n) });
        }
        if n == 0 {
            self.done = true;
        }
        Ok(n as usize)
    }

    /// Reads the whole body and closes the response.
    pub fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        loop {
            if out.capacity() - out.len() < READ_CHUNK / 2 {
                out.reserve(out.capacity().max(READ_CHUNK));
            }
            let len = out.len();
            let cap = out.capacity();
            out.resize(cap, 0);
            let n = self.read_chunk(&mut out[len..])?;
            out.truncate(len + n);
            if n == 0 {
                return Ok(out);
            }
        }
    }

    /// Reads the whole body, closes the response and parses it as JSON. It does not look at
    /// the status: check `status` first.
    pub fn json(self) -> Result<json::Value, String> {
        let status = self.status;
        let what = self.what.clone();
        let b = self.bytes().map_err(|e| e.to_string())?;
        json::parse(&b).map_err(|e| {
            format!("castellan: {}: decoding response body (HTTP {}, {} bytes) as JSON: {}", what, status, b.len(), e)
        })
    }

    /// Releases the response on the host; also done on drop.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            unsafe { sys::http_close(self.handle) };
        }
    }
}

impl io::Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_chunk(buf).map_err(|e| io::Error::new(io::ErrorKind::Other, e))
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        self.close();
    }
}
