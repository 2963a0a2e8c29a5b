//! Recycling of reported messages.
//!
//! An offline `--json` run builds and drops tens of thousands of messages a second, each
//! with a few strings, a header list and a body buffer; the allocator's cost for those is
//! comparable to parsing them. Handing the buffers of a reported exchange back to the
//! parser that builds the next message avoids it. The pool is per thread (the thread that
//! parses) and bounded in count and in the size of what it keeps.

use std::cell::RefCell;
use std::time::SystemTime;

use super::message::{Body, Exchange, Headers, Request, Response};

/// Messages kept per kind: at least as many as the sniffer's output thread holds at once
/// (`sniff::writer`: 256 records a batch, up to 8 batches in flight and one being filled).
/// Batches come back several at a time; a smaller pool dropped most of them, and the
/// parser then built most messages from new allocations after all.
const MAX_KEPT: usize = 2560;
/// Messages holding more than this (headers and body) are freed rather than kept.
const MAX_KEPT_BYTES: usize = 64 * 1024;

// Boxed: messages travel as `Box<Request>`/`Box<Response>` (in `Exchange`), and the pool
// keeps the boxes so that taking one back costs no move of the message.
#[allow(clippy::vec_box)]
#[derive(Default)]
struct Pool {
    requests: Vec<Box<Request>>,
    responses: Vec<Box<Response>>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An empty request stamped `ts`, reusing recycled buffers when there are some.
pub fn request(ts: SystemTime) -> Box<Request> {
    let mut r = POOL
        .with(|p| p.borrow_mut().requests.pop())
        .unwrap_or_else(|| {
            Box::new(Request {
                method: String::new(),
                target: String::new(),
                version: "HTTP/1.1",
                headers: Headers::new(),
                body: Body::default(),
                ts,
            })
        });
    r.ts = ts;
    r
}

/// An empty response stamped `ts`, reusing recycled buffers when there are some.
pub fn response(ts: SystemTime) -> Box<Response> {
    let mut r = POOL
        .with(|p| p.borrow_mut().responses.pop())
        .unwrap_or_else(|| {
            Box::new(Response {
                status: 0,
                reason: String::new(),
                version: "HTTP/1.1",
                headers: Headers::new(),
                body: Body::default(),
                ts,
            })
        });
    r.ts = ts;
    r
}

fn clear_body(b: &mut Body) {
    b.data.clear();
    b.len = 0;
    b.truncated = false;
}

fn small(headers: &Headers, body: &Body, strings: usize) -> bool {
    headers.capacity() + body.data.capacity() + strings <= MAX_KEPT_BYTES
}

/// Empties a reported request for reuse, keeping its buffers; false if it holds too much
/// to be worth keeping. Done by whichever thread last read it, so that the parser's
/// thread need not touch it again before it builds the next message in it.
pub(crate) fn empty_request(r: &mut Request) -> bool {
    let strings = r.method.capacity() + r.target.capacity();
    r.method.clear();
    r.target.clear();
    r.headers.clear();
    clear_body(&mut r.body);
    small(&r.headers, &r.body, strings)
}

/// `empty_request` for a response.
pub(crate) fn empty_response(r: &mut Response) -> bool {
    let strings = r.reason.capacity();
    r.status = 0;
    r.reason.clear();
    r.headers.clear();
    clear_body(&mut r.body);
    small(&r.headers, &r.body, strings)
}

/// Takes back requests that were emptied by `empty_request` (and found worth keeping),
/// without reading them.
pub(crate) fn keep_requests(rs: impl IntoIterator<Item = Box<Request>>) {
    POOL.with(|p| {
        let requests = &mut p.borrow_mut().requests;
        let room = MAX_KEPT.saturating_sub(requests.len());
        requests.extend(rs.into_iter().take(room));
    });
}

/// `keep_requests` for responses.
pub(crate) fn keep_responses(rs: impl IntoIterator<Item = Box<Response>>) {
    POOL.with(|p| {
        let responses = &mut p.borrow_mut().responses;
        let room = MAX_KEPT.saturating_sub(responses.len());
        responses.extend(rs.into_iter().take(room));
    });
}

/// Takes back a request that has been reported.
pub(crate) fn recycle_request(mut r: Box<Request>) {
    if empty_request(&mut r) {
        keep_requests([r]);
    }
}

/// Takes back a response that has been reported.
pub(crate) fn recycle_response(mut r: Box<Response>) {
    if empty_response(&mut r) {
        keep_responses([r]);
    }
}

/// Takes back the messages of an exchange that has been reported.
pub fn recycle(ex: Exchange) {
    recycle_request(ex.request);
    if let Some(r) = ex.response {
        recycle_response(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_reused_empty_and_the_pool_is_bounded() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut a = request(t0);
        a.method.push_str("GET");
        a.headers.push("Host", "a");
        a.body.data.extend_from_slice(b"body");
        a.body.len = 4;
        let ptr = a.body.data.as_ptr();
        recycle_request(a);
        let t1 = t0 + std::time::Duration::from_secs(1);
        let b = request(t1);
        assert_eq!((b.body.data.as_ptr(), b.ts), (ptr, t1));
        assert!(b.method.is_empty() && b.headers.is_empty() && b.body == Body::default());
        // An oversized message is not kept.
        let mut big = response(t0);
        big.body.data.reserve(MAX_KEPT_BYTES + 1);
        recycle_response(big);
        assert!(POOL.with(|p| p.borrow().responses.is_empty()));
        let many: Vec<Box<Request>> = (0..MAX_KEPT * 2).map(|_| request(t0)).collect();
        many.into_iter().for_each(recycle_request);
        assert_eq!(POOL.with(|p| p.borrow().requests.len()), MAX_KEPT);
    }
}
