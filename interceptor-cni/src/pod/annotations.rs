//! The pod annotations that decide interception, and istio-cni's checks of their values.
//!
//! The checks are istio-cni's (`cni/pkg/plugin/sidecar_redirect.go`): a value they reject
//! is an [`AnnotationError`], and the plugin fails the pod rather than start it with
//! interception other than what it asked for.

use std::net::IpAddr;

use crate::spec::{code, CniError};

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";
pub(crate) const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub(crate) const STATUS_PORT: &str = "status.sidecar.istio.io/port";
pub(crate) const INJECT_TEMPLATES: &str = "inject.istio.io/templates";
pub(crate) const INCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub(crate) const EXCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub(crate) const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub(crate) const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub(crate) const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub(crate) const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// Deprecated in istio for [`REROUTE_VIRTUAL_INTERFACES`], which wins when both are set.
pub(crate) const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub(crate) const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";

/// A pod annotation whose value istio would reject.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid pod annotation {annotation}: {value:?}: {reason}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

impl From<&AnnotationError> for CniError {
    fn from(e: &AnnotationError) -> CniError {
        CniError::new(
            code::INVALID_POD_ANNOTATION,
            "invalid pod annotation",
            e.to_string(),
        )
    }
}

impl From<AnnotationError> for CniError {
    fn from(e: AnnotationError) -> CniError {
        CniError::from(&e)
    }
}

/// A check of one annotation's value: `Err(reason)` when istio would reject it.
pub(crate) type Check = fn(&str) -> Result<(), String>;

/// `REDIRECT` or `TPROXY`, exactly (NONE is handled before: it means "do not intercept").
pub(crate) fn interception_mode(v: &str) -> Result<(), String> {
    match v {
        "REDIRECT" | "TPROXY" => Ok(()),
        _ => Err("expected REDIRECT, TPROXY or NONE".into()),
    }
}

/// `*`, or a CIDR list.
pub(crate) fn cidrs_or_wildcard(v: &str) -> Result<(), String> {
    if v == "*" {
        Ok(())
    } else {
        cidrs(v)
    }
}

/// A comma-separated CIDR list, possibly empty. Items are not trimmed: Go's
/// `netip.ParsePrefix` rejects spaces, so istio does too.
pub(crate) fn cidrs(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    v.split(',').try_for_each(prefix)
}

/// One `address/bits`, as `netip.ParsePrefix` takes it: no zone, bits in decimal without
/// sign or leading zero, at most the address's width. Host bits may be set.
fn prefix(item: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("CIDR {item:?} {why}"));
    let Some((addr, bits)) = item.rsplit_once('/') else {
        return bad("has no '/'");
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return bad("has no valid IP address before the '/'");
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let digits_ok = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && !(bits.len() > 1 && bits.starts_with('0'));
    match bits.parse::<u32>() {
        Ok(n) if digits_ok && n <= max => Ok(()),
        _ => bad(&format!("has a prefix length that is not 0 to {max}")),
    }
}

/// `*`, or a port list.
pub(crate) fn ports_or_wildcard(v: &str) -> Result<(), String> {
    if v == "*" {
        Ok(())
    } else {
        ports(v)
    }
}

/// A comma-separated port list, possibly empty (after trimming); each item trimmed and a
/// decimal number from 0 to 65535, as istio's `parsePorts` takes it.
pub(crate) fn ports(v: &str) -> Result<(), String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(());
    }
    for item in v.split(',') {
        port(item)?;
    }
    Ok(())
}

/// One port (trimmed); leading zeros are fine, a sign is not (Go's `ParseUint`).
pub(crate) fn port(item: &str) -> Result<u16, String> {
    let t = item.trim();
    match t.parse::<u16>() {
        Ok(p) if t.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("port {item:?} is not a number from 0 to 65535")),
    }
}

/// A comma-separated list of Linux interface names, possibly empty: each trimmed, 1 to 15
/// characters, a letter then letters, digits, `_`, `.` or `-`.
pub(crate) fn interfaces(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    for item in v.split(',') {
        let name = item.trim();
        let mut chars = name.chars();
        if name.is_empty() {
            return Err("empty interface name".into());
        }
        if name.len() > 15 {
            return Err(format!(
                "interface name {name:?} is longer than 15 characters"
            ));
        }
        let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(format!("interface name {name:?} has invalid characters"));
        }
    }
    Ok(())
}

/// Go's `strconv.ParseBool`: `None` for anything else (istio then ignores the value).
pub(crate) fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists() {
        for ok in [
            "",
            "10.0.0.0/8",
            "10.0.0.1/8,192.168.0.0/16",
            "0.0.0.0/0",
            "::/0",
            "fd00::/8,10.96.0.0/12",
            "::ffff:10.0.0.0/104",
            "1.2.3.4/32",
        ] {
            assert_eq!(cidrs(ok), Ok(()), "{ok}");
        }
        for bad in [
            "*",
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/8,",
            "10.0.0.0/8, 10.1.0.0/16",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "::/129",
            "host/8",
        ] {
            assert!(cidrs(bad).is_err(), "{bad}");
        }
        assert_eq!(cidrs_or_wildcard("*"), Ok(()));
        assert!(cidrs_or_wildcard("*,10.0.0.0/8").is_err());
        assert_eq!(
            cidrs("10.0.0.0/8,10.0.0.0/40"),
            Err("CIDR \"10.0.0.0/40\" has a prefix length that is not 0 to 32".into())
        );
    }

    #[test]
    fn port_lists() {
        for ok in ["", "  ", "80", "80,443", " 80 , 443 ", "0,65535", "0080"] {
            assert_eq!(ports(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "*", "80,", "80,,443", "65536", "-1", "+80", "http", "80;443",
        ] {
            assert!(ports(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ports_or_wildcard("*"), Ok(()));
        assert_eq!(
            ports("80,x"),
            Err("port \"x\" is not a number from 0 to 65535".into())
        );
    }

    #[test]
    fn interface_lists() {
        for ok in ["", "eth1", "net1, eth2", "k6t-eth0", "veth0.100"] {
            assert_eq!(interfaces(ok), Ok(()), "{ok:?}");
        }
        for bad in ["eth1,", "0eth", "eth/1", "averyveryverylongif", "eth 1"] {
            assert!(interfaces(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes_and_bools() {
        assert_eq!(interception_mode("REDIRECT"), Ok(()));
        assert_eq!(interception_mode("TPROXY"), Ok(()));
        assert!(interception_mode("redirect").is_err());
        assert_eq!(go_bool("False"), Some(false));
        assert_eq!(go_bool("t"), Some(true));
        assert_eq!(go_bool("no"), None);
        assert_eq!(go_bool("enabled"), None);
    }

    #[test]
    fn error_names_annotation_and_value() {
        let e = AnnotationError {
            annotation: EXCLUDE_INBOUND_PORTS,
            value: "80,x".into(),
            reason: "port \"x\" is not a number from 0 to 65535".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid pod annotation traffic.sidecar.istio.io/excludeInboundPorts: \"80,x\": \
             port \"x\" is not a number from 0 to 65535"
        );
        assert_eq!(CniError::from(&e).code, 100);
    }
}
