//! HTTP/1.1 as seen on the wire: the messages and exchanges the sniffer reports.

pub mod message;

pub use message::{Body, Exchange, Request, Response};
