//! HTTP/1.1 as seen on the wire: the messages and exchanges the sniffer reports.

pub mod decode;
pub mod head;
pub mod message;
pub mod pool;
pub mod stream;

pub use message::{Body, Exchange, Headers, Known, Request, Response};
