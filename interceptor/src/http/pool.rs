//! Recycling of the small strings that header fields are made of.
//!
//! An offline `--json` run builds and drops a few dozen header strings per exchange; with
//! the allocator's cost per string comparable to parsing the field, handing the strings of
//! a reported exchange back to the parser that builds the next one saves a large share of
//! the run. The pool is per thread and bounded in count and in string size.

use std::cell::RefCell;

use super::message::Exchange;

const MAX_STRINGS: usize = 8192;
const MAX_VECS: usize = 512;
/// Larger strings are freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 1024;

#[derive(Default)]
struct Pool {
    strings: Vec<String>,
    vecs: Vec<Vec<(String, String)>>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A string holding `s`, reusing a recycled buffer when there is one.
pub fn string_from(s: &str) -> String {
    let mut out = POOL
        .with(|p| p.borrow_mut().strings.pop())
        .unwrap_or_default();
    out.push_str(s);
    out
}

/// An empty header list with room for `n` fields.
pub fn header_vec(n: usize) -> Vec<(String, String)> {
    let mut v = POOL.with(|p| p.borrow_mut().vecs.pop()).unwrap_or_default();
    v.reserve(n);
    v
}

fn give_headers(p: &mut Pool, mut hs: Vec<(String, String)>) {
    for (mut n, mut v) in hs.drain(..) {
        for s in [&mut n, &mut v] {
            if p.strings.len() < MAX_STRINGS && s.capacity() <= MAX_KEPT_CAPACITY {
                s.clear();
                p.strings.push(std::mem::take(s));
            }
        }
    }
    if p.vecs.len() < MAX_VECS && hs.capacity() <= 256 {
        p.vecs.push(hs);
    }
}

/// Takes back the header strings of an exchange that has been reported.
pub fn recycle(ex: Exchange) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        give_headers(&mut p, ex.request.headers);
        if let Some(r) = ex.response {
            give_headers(&mut p, r.headers);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_reused_and_the_pool_is_bounded() {
        let a = string_from("content-type");
        let ptr = a.as_ptr();
        POOL.with(|p| give_headers(&mut p.borrow_mut(), vec![(a, String::with_capacity(4096))]));
        let b = string_from("host");
        assert_eq!((b.as_str(), b.as_ptr()), ("host", ptr));
        // The oversized value was not kept.
        assert!(POOL.with(|p| p.borrow().strings.is_empty()));
        for _ in 0..MAX_STRINGS * 2 {
            POOL.with(|p| {
                give_headers(
                    &mut p.borrow_mut(),
                    vec![(String::from("x"), String::from("y"))],
                )
            });
        }
        assert!(POOL.with(|p| p.borrow().strings.len()) <= MAX_STRINGS);
    }
}
