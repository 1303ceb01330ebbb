//! http: a small HTTP/1.1 server for the fs module's files: GET and HEAD, content types by
//! extension, keep-alive and pipelining, a directory's index.html (a directory path without
//! the trailing slash is redirected to it), 404, 405 for other methods, 400 for a malformed
//! request (that connection is then closed; the server goes on).
//!
//! One poll loop drives every connection as a small state machine directly on smoltcp's TCP
//! sockets, so an idle keep-alive client or a slow reader does not hold up the others, and a
//! client that goes away mid-transfer only ends its own connection. File bodies are sent
//! straight from the image (the fs data is static: no copy but into the socket buffer).

use crate::net::{self, Error, Stack};
use crate::tcp;
use alloc::{format, string::String, vec::Vec};
use core::time::Duration;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, State};

/// Listening sockets kept ready (connections can arrive while others are served).
const BACKLOG: usize = 4;
/// Connections served at once; more wait in the backlog.
const MAX_CONNS: usize = 32;
const RX_BUFFER: usize = 4 * 1024;
const TX_BUFFER: usize = 64 * 1024;
/// A request head longer than this is refused (400).
const MAX_HEAD: usize = 8 * 1024;
/// A keep-alive connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// A handshake not completed in this time is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// A response that makes no progress this long (the client stopped reading) is reset.
const STALL: Duration = Duration::from_secs(60);

/// A response being sent: the head, then a body borrowed from the image.
struct Response {
    head: Vec<u8>,
    body: &'static [u8],
    sent: usize,
    close: bool,
}

struct Conn {
    handle: SocketHandle,
    /// Received bytes not yet answered (pipelined requests wait here).
    buf: Vec<u8>,
    resp: Option<Response>,
    last_progress: Duration,
}

/// What became of a connection after a step.
enum Next {
    Keep,
    /// Done with it: close gracefully (what is queued still goes out).
    Release,
    /// The connection is gone (reset, or never completed): drop the socket.
    Remove,
}

/// Serves the files under `root` of the baked fs (e.g. "/www") on `port`, forever. Returns only
/// when the port cannot be listened on.
#[inline(never)]
pub fn serve(rt: &mut crate::Runtime, port: u16, root: &'static str) -> Error {
    let fs = rt.fs();
    let root = root.trim_end_matches('/');
    let s = net::stack();
    let mut listeners = Vec::with_capacity(BACKLOG);
    for _ in 0..BACKLOG {
        match tcp::listen(s, port, RX_BUFFER, TX_BUFFER) {
            Ok(h) => listeners.push(h),
            Err(e) => return e,
        }
    }
    crate::println!("http: serving {} on port {port}", if root.is_empty() { "/" } else { root });
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        s.poll();
        let now = crate::clock::now();
        // A listening socket that got a connection becomes one; a fresh one takes its place.
        for l in listeners.iter_mut() {
            if conns.len() < MAX_CONNS && s.sockets.get::<Socket>(*l).state() != State::Listen {
                let Ok(fresh) = tcp::listen(s, port, RX_BUFFER, TX_BUFFER) else { continue };
                conns.push(Conn { handle: *l, buf: Vec::new(), resp: None, last_progress: now });
                *l = fresh;
            }
        }
        conns.retain_mut(|c| match c.step(s, fs, root, now) {
            Next::Keep => true,
            Next::Release => {
                tcp::release(s, c.handle);
                false
            }
            Next::Remove => {
                s.sockets.remove(c.handle);
                false
            }
        });
    }
}

impl Conn {
    #[inline(never)]
    fn step(&mut self, s: &mut Stack, fs: &crate::fs::Fs, root: &str, now: Duration) -> Next {
        let k = s.sockets.get_mut::<Socket>(self.handle);
        match k.state() {
            // Reset by the peer, or a handshake that failed (the socket went back to listening).
            State::Closed | State::TimeWait | State::Listen => return Next::Remove,
            // A handshake the client never completes frees its slot after a while.
            State::SynReceived => return if now - self.last_progress > HANDSHAKE { Next::Remove } else { Next::Keep },
            _ => {}
        }
        // Take in what arrived (only while not answering: pipelined requests wait in the
        // socket, which bounds the memory a client can make us hold).
        if self.resp.is_none() && k.can_recv() {
            let room = MAX_HEAD + 1 - self.buf.len().min(MAX_HEAD + 1);
            let buf = &mut self.buf;
            let _ = k.recv(|data| {
                let n = data.len().min(room);
                buf.extend_from_slice(&data[..n]);
                (n, ())
            });
            self.last_progress = now;
        }
        if self.resp.is_none() {
            if let Some(end) = head_end(&self.buf) {
                self.resp = Some(respond(&self.buf[..end], fs, root));
                self.buf.drain(..end);
            } else if self.buf.len() > MAX_HEAD {
                self.resp = Some(error(400, "Bad Request", false, true));
            } else if !k.may_recv() {
                return Next::Release; // the client is done and left no complete request
            } else if now - self.last_progress > IDLE {
                return Next::Release;
            }
        }
        if let Some(r) = &mut self.resp {
            let total = r.head.len() + r.body.len();
            while r.sent < total && k.can_send() {
                let chunk = if r.sent < r.head.len() { &r.head[r.sent..] } else { &r.body[r.sent - r.head.len()..] };
                match k.send_slice(chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        r.sent += n;
                        self.last_progress = now;
                    }
                }
            }
            if r.sent == total {
                let close = r.close;
                self.resp = None;
                if close {
                    return Next::Release;
                }
            } else if !k.may_send() {
                return Next::Remove; // the client went away mid-transfer
            } else if now - self.last_progress > STALL {
                k.abort();
                return Next::Keep; // Closed after the reset goes out, then removed
            }
        }
        Next::Keep
    }
}

/// Where the request head ends (after the blank line), if it is complete.
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn status_response(code: u16, reason: &str, content_type: &str, len: usize, extra: &str, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nServer: imgbuild-unikernel\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n{extra}Connection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes()
}

/// A small text response: "404 Not Found\n".
fn error(code: u16, reason: &'static str, head_only: bool, close: bool) -> Response {
    error_with(code, reason, head_only, close, "")
}

fn error_with(code: u16, reason: &'static str, head_only: bool, close: bool, extra: &str) -> Response {
    let body = format!("{code} {reason}\n");
    let mut head = status_response(code, reason, "text/plain; charset=utf-8", body.len(), extra, close);
    if !head_only {
        head.extend_from_slice(body.as_bytes());
    }
    Response { head, body: &[], sent: 0, close }
}

/// Answers one request head.
#[inline(never)]
fn respond(head: &[u8], fs: &crate::fs::Fs, root: &str) -> Response {
    let Ok(text) = core::str::from_utf8(head) else { return error(400, "Bad Request", false, true) };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return error(400, "Bad Request", false, true);
    };
    let Some(minor) = version.strip_prefix("HTTP/1.") else { return error(400, "Bad Request", false, true) };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return error(400, "Bad Request", false, true);
    }
    let mut keep_alive = minor != "0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { return error(400, "Bad Request", false, true) };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if (name.eq_ignore_ascii_case("content-length") && value != "0") || name.eq_ignore_ascii_case("transfer-encoding") {
            // A request body is not read: end the connection after answering.
            keep_alive = false;
        }
    }
    let close = !keep_alive;
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return error_with(405, "Method Not Allowed", false, true, "Allow: GET, HEAD\r\n");
    }
    // origin-form "/path?query", or absolute-form "http://host/path".
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return error(400, "Bad Request", head_only, true);
    }
    let Some(path) = percent_decode(path) else { return error(400, "Bad Request", head_only, true) };
    // Normalised below the root: ".." stops at it.
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut file = String::from(root);
    for seg in &segs {
        file.push('/');
        file.push_str(seg);
    }
    if file.is_empty() {
        file.push('/');
    }
    let Some(meta) = fs.metadata(&file) else { return error(404, "Not Found", head_only, close) };
    if meta.is_dir() {
        if !path.ends_with('/') {
            let location = format!("Location: {}/\r\n", target.split(['?', '#']).next().unwrap_or(""));
            return error_with(301, "Moved Permanently", head_only, close, &location);
        }
        file.push_str(if file.ends_with('/') { "index.html" } else { "/index.html" });
    }
    let Some(data) = fs.read(&file) else { return error(404, "Not Found", head_only, close) };
    let head = status_response(200, "OK", content_type(&file), data.len(), "", close);
    Response { head, body: if head_only { &[] } else { data }, sent: 0, close }
}

/// "%41" → "A"; None for a bad escape, NUL, or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = core::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The Content-Type for a file name's extension.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}
