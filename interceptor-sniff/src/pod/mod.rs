//! Pod-aware capture (`sniff --pod`): which host interface leads to a pod ([`locate`]),
//! and which pod each record was seen for ([`PodTags`]), so outputs can say so.

pub mod locate;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::http::Exchange;

/// A pod a capture is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub ip: IpAddr,
    /// Known when the node agent has a record of the pod.
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// The host-side interface that leads to it.
    pub interface: String,
}

/// A pod with what outputs write for it, made once.
#[derive(Clone, Debug)]
pub struct Tag {
    pub pod: Pod,
    /// `{"ip":…,"name":…,"namespace":…}`, names null when unknown.
    json: Box<[u8]>,
    /// `namespace/name`, or the address when the name is unknown.
    label: String,
}

impl Tag {
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// The pods of a capture, found by interface (each pod's own veth) or by address.
#[derive(Clone, Debug, Default)]
pub struct PodTags {
    tags: Vec<Tag>,
    by_interface: HashMap<String, usize>,
    by_ip: HashMap<IpAddr, usize>,
}

impl PodTags {
    pub fn new(pods: Vec<Pod>) -> PodTags {
        let mut t = PodTags::default();
        for pod in pods {
            let i = t.tags.len();
            t.by_interface.entry(pod.interface.clone()).or_insert(i);
            t.by_ip.entry(pod.ip).or_insert(i);
            let json = serde_json::json!({
                "ip": pod.ip.to_string(),
                "name": pod.name,
                "namespace": pod.namespace,
            });
            let label = match (&pod.namespace, &pod.name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                (None, Some(n)) => n.clone(),
                _ => pod.ip.to_string(),
            };
            t.tags.push(Tag {
                json: serde_json::to_vec(&json).unwrap_or_default().into(),
                label,
                pod,
            });
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The pod an exchange was seen for: the one whose interface it was captured on, else
    /// the one it was sent from or to.
    pub fn for_exchange(&self, ex: &Exchange) -> Option<&Tag> {
        ex.interface
            .as_deref()
            .and_then(|i| self.by_interface.get(i))
            .and_then(|&i| self.tags.get(i))
            .or_else(|| self.for_addrs(ex.client, ex.server))
    }

    /// The pod at either end; when both are pods of the capture, the one given first (so
    /// a request and its response, whose ends are swapped, name the same pod).
    pub(crate) fn for_addrs(&self, a: SocketAddr, b: SocketAddr) -> Option<&Tag> {
        let ia = self.by_ip.get(&a.ip()).copied();
        let ib = self.by_ip.get(&b.ip()).copied();
        let i = match (ia, ib) {
            (Some(x), Some(y)) => x.min(y),
            (x, y) => x.or(y)?,
        };
        self.tags.get(i)
    }

    pub fn for_ip(&self, ip: IpAddr) -> Option<&Tag> {
        self.by_ip.get(&ip).and_then(|&i| self.tags.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::pool;
    use std::time::SystemTime;

    fn tags() -> PodTags {
        PodTags::new(vec![
            Pod {
                ip: "10.1.0.5".parse().unwrap(),
                name: Some("catalog-v1-6d9c5f8b7-xk2lp".into()),
                namespace: Some("shop".into()),
                interface: "veth1".into(),
            },
            Pod {
                ip: "10.1.0.6".parse().unwrap(),
                name: None,
                namespace: None,
                interface: "veth2".into(),
            },
        ])
    }

    #[test]
    fn records_are_tagged_by_interface_then_address() {
        let t = tags();
        let ex = |client: &str, server: &str, interface: Option<&str>| Exchange {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            interface: interface.map(str::to_string),
            request: pool::request(SystemTime::UNIX_EPOCH),
            response: None,
        };
        let label = |e: &Exchange| t.for_exchange(e).map(|t| t.label().to_string());
        assert_eq!(
            label(&ex("10.1.0.6:1", "10.1.0.5:80", Some("veth2"))).as_deref(),
            Some("10.1.0.6")
        );
        assert_eq!(
            label(&ex("10.1.0.6:1", "10.1.0.5:80", None)).as_deref(),
            Some("shop/catalog-v1-6d9c5f8b7-xk2lp")
        );
        assert_eq!(
            label(&ex("10.9.0.1:1", "10.1.0.6:80", Some("eth0"))).as_deref(),
            Some("10.1.0.6")
        );
        assert_eq!(label(&ex("10.9.0.1:1", "10.9.0.2:80", None)), None);
        assert_eq!(
            String::from_utf8(t.tags()[0].json().to_vec()).unwrap(),
            r#"{"ip":"10.1.0.5","name":"catalog-v1-6d9c5f8b7-xk2lp","namespace":"shop"}"#
        );
        assert_eq!(
            t.tags()[1].json(),
            br#"{"ip":"10.1.0.6","name":null,"namespace":null}"#
        );
    }
}
