//! Recognising TLS on a flow and reading the ClientHello's SNI and ALPN, so a user can see
//! that a connection is encrypted (Istio mTLS offers ALPN `istio-peer-exchange`,
//! `istio-http/1.1`, ...) and to which name, without decrypting anything.

/// What the first bytes of a direction say it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record (ClientHello or ServerHello).
    Handshake,
    /// TLS application data or alert: the handshake was before the capture started.
    Records,
    NotTls,
    /// Too few bytes to tell.
    Unsure,
}

/// Looks at the first bytes of a stream.
pub fn sniff(b: &[u8]) -> Sniffed {
    if b.len() < 3 {
        // A lone 0x16/0x17 prefix could still be TLS.
        return match b.first() {
            Some(0x14..=0x17) if b.get(1).is_none_or(|v| *v == 3) => Sniffed::Unsure,
            None => Sniffed::Unsure,
            _ => Sniffed::NotTls,
        };
    }
    match (b[0], b[1], b[2]) {
        (0x16, 3, 0..=4) => Sniffed::Handshake,
        (0x14 | 0x15 | 0x17, 3, 1..=4) => Sniffed::Records,
        _ => Sniffed::NotTls,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    /// Versions offered in supported_versions, or the legacy version: "1.2", "1.3".
    pub versions: Vec<String>,
}

/// Outcome of parsing the start of a client stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    Complete(ClientHello),
    /// Need more bytes (the hello can span records and segments).
    Partial,
    /// Not a well-formed ClientHello.
    Invalid,
}

/// Largest ClientHello we buffer; real ones with post-quantum key shares are under 2 KiB.
pub(crate) const MAX_HELLO: usize = 16 * 1024;

/// Parses the ClientHello from the start of the client's byte stream.
pub(crate) fn client_hello(stream: &[u8]) -> Hello {
    // Gather the handshake bytes from consecutive handshake records.
    let mut hs = Vec::new();
    let mut at = 0;
    while let Some(hdr) = stream.get(at..at + 5) {
        if hdr[0] != 0x16 || hdr[1] != 3 {
            if hs.is_empty() {
                return Hello::Invalid;
            }
            break;
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        let body = stream
            .get(at + 5..(at + 5 + len).min(stream.len()))
            .unwrap_or(&[]);
        hs.extend_from_slice(body);
        if body.len() < len {
            break;
        }
        at += 5 + len;
        if handshake_complete(&hs) {
            break;
        }
    }
    if hs.len() < 4 {
        return Hello::Partial;
    }
    if hs[0] != 1 {
        return Hello::Invalid;
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if hs.len() < 4 + len {
        return if stream.len() >= MAX_HELLO {
            Hello::Invalid
        } else {
            Hello::Partial
        };
    }
    match parse_hello(&hs[4..4 + len]) {
        Some(h) => Hello::Complete(h),
        None => Hello::Invalid,
    }
}

fn handshake_complete(hs: &[u8]) -> bool {
    hs.len() >= 4 && {
        let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
        hs.len() >= 4 + len
    }
}

/// A cursor that fails (None) instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

fn version_name(v: u16) -> Option<String> {
    match v {
        0x0301 => Some("1.0".into()),
        0x0302 => Some("1.1".into()),
        0x0303 => Some("1.2".into()),
        0x0304 => Some("1.3".into()),
        _ => None, // GREASE and unknown
    }
}

fn parse_hello(b: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(b);
    let legacy = r.u16()?;
    r.take(32)?; // random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut hello = ClientHello::default();
    if let Some(exts) = r.vec16() {
        let mut e = Reader(exts);
        while !e.0.is_empty() {
            let kind = e.u16()?;
            let data = e.vec16()?;
            let mut d = Reader(data);
            match kind {
                0 => {
                    // server_name: list of (type, name); type 0 is host_name.
                    let mut list = Reader(d.vec16()?);
                    while !list.0.is_empty() {
                        let t = list.u8()?;
                        let name = list.vec16()?;
                        if t == 0 && hello.sni.is_none() {
                            hello.sni = Some(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
                16 => {
                    let mut list = Reader(d.vec16()?);
                    while !list.0.is_empty() {
                        hello
                            .alpn
                            .push(String::from_utf8_lossy(list.vec8()?).into_owned());
                    }
                }
                43 => {
                    let mut list = Reader(d.vec8()?);
                    while let Some(v) = list.u16() {
                        hello.versions.extend(version_name(v));
                    }
                }
                _ => {}
            }
        }
    }
    if hello.versions.is_empty() {
        hello.versions.extend(version_name(legacy));
    }
    Some(hello)
}

/// Builds a ClientHello record (tests).
#[cfg(test)]
pub(crate) fn build_client_hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    fn v16(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend(v16(name.as_bytes()));
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend(v16(&v16(&entry)));
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend(v16(&v16(&list)));
    }
    exts.extend_from_slice(&43u16.to_be_bytes());
    exts.extend(v16(&[4, 0x03, 0x04, 0x03, 0x03]));
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend(v16(&[0x13, 0x01]));
    body.extend_from_slice(&[1, 0]);
    body.extend(v16(&exts));
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend(v16(&hs));
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sni_alpn_and_versions_across_any_split() {
        let rec = build_client_hello(
            Some("outbound_.80_._.catalog.istioinaction.svc.cluster.local"),
            &["istio-peer-exchange", "istio-http/1.1"],
        );
        assert_eq!(sniff(&rec), Sniffed::Handshake);
        for cut in 0..rec.len() {
            assert_eq!(client_hello(&rec[..cut]), Hello::Partial, "cut {cut}");
        }
        let Hello::Complete(h) = client_hello(&rec) else {
            panic!()
        };
        assert_eq!(
            h.sni.as_deref(),
            Some("outbound_.80_._.catalog.istioinaction.svc.cluster.local")
        );
        assert_eq!(h.alpn, vec!["istio-peer-exchange", "istio-http/1.1"]);
        assert_eq!(h.versions, vec!["1.3", "1.2"]);
    }

    #[test]
    fn hello_split_over_two_records() {
        let rec = build_client_hello(Some("a.example"), &["h2"]);
        let hs = &rec[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![0x16, 3, 1, 0, a.len() as u8];
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        let Hello::Complete(h) = client_hello(&two) else {
            panic!()
        };
        assert_eq!(h.sni.as_deref(), Some("a.example"));
    }

    #[test]
    fn plaintext_is_not_tls_and_garbage_never_panics() {
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniffed::NotTls);
        assert_eq!(sniff(b"\x17\x03\x03\x00\x10"), Sniffed::Records);
        let rec = build_client_hello(Some("x"), &["h2"]);
        for i in 5..rec.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut bad = rec.clone();
                bad[i] = v;
                let _ = client_hello(&bad);
            }
        }
    }
}
