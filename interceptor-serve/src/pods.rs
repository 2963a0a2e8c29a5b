//! The pods the node agent knows, as files: one JSON object per pod in
//! `<state_dir>/pods/<uid>.json` (`state_dir` defaults to `/var/run/interceptor`, the CNI
//! plugin's `state_dir`). The agent writes a record when it sets a pod up and removes it
//! when the pod goes; `interceptor sniff --pod NAMESPACE/NAME` and the pod labels of the
//! metrics read them. Files, not a socket: a sniff on the node needs no agent API, and a
//! record outlives an agent restart.
//!
//! ```json
//! {"namespace":"istioinaction","name":"catalog-v1-6d9c5f8b7-xk2lp","uid":"0b6c…",
//!  "ip":"10.123.2.2","netns":"/var/run/netns/cni-4f…","mode":"iptables"}
//! ```
//!
//! `ip` is the pod's primary address; `ips` (optional) lists every address of a dual-stack
//! pod; `netns` is the path of its network namespace as the runtime gave it to CNI;
//! `mode` is how its traffic is intercepted (`iptables`, `ebpf`, or `none`). Unknown keys
//! are ignored, so the format can grow.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use interceptor_sniff::pod::PodTags;
use serde::{Deserialize, Serialize};

/// Where the agent keeps its pod records unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/run/interceptor/pods";

/// One pod, as the agent records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub mode: String,
}

impl PodRecord {
    /// Every address of the pod, the primary first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.ip).chain(self.ips.iter().copied().filter(move |a| *a != self.ip))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a pod record: {source}", path.display())]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("a pod uid must be a plain file name, not {0:?}")]
    BadUid(String),
}

/// Every record in `dir`, sorted by namespace and name. A missing directory is an empty
/// list (no agent, or no pod yet); a file that is not a record is an error naming it, so a
/// format change shows instead of pods silently vanishing.
pub fn read_all(dir: &Path) -> Result<Vec<PodRecord>, PodsError> {
    let io_err = |source| PodsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut pods = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err)?.path();
        // Temporary files of a write in progress end in `.tmp`.
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = match fs::read(&path) {
            Ok(t) => t,
            // Removed between the listing and the read: the pod went.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PodsError::Io { path, source }),
        };
        let rec = serde_json::from_slice(&text).map_err(|source| PodsError::Format {
            path: path.clone(),
            source,
        })?;
        pods.push(rec);
    }
    pods.sort_by(|a: &PodRecord, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}

/// Writes `rec` as `<dir>/<uid>.json`, atomically (a reader sees the old file or the new
/// one, never half of one), creating `dir` if needed.
pub fn write(dir: &Path, rec: &PodRecord) -> Result<PathBuf, PodsError> {
    let path = record_path(dir, &rec.uid)?;
    let io_err = |p: &Path, source| PodsError::Io {
        path: p.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_vec(rec).map_err(|source| PodsError::Format {
        path: path.clone(),
        source,
    })?;
    text.push(b'\n');
    let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(&text).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    Ok(path)
}

/// Removes the record of pod `uid`; one already gone is not an error.
pub fn remove(dir: &Path, uid: &str) -> Result<(), PodsError> {
    let path = record_path(dir, uid)?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PodsError::Io { path, source }),
    }
}

fn record_path(dir: &Path, uid: &str) -> Result<PathBuf, PodsError> {
    let plain = !uid.is_empty()
        && uid != "."
        && uid != ".."
        && uid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !plain {
        return Err(PodsError::BadUid(uid.to_string()));
    }
    Ok(dir.join(format!("{uid}.json")))
}

/// The workload a pod belongs to, as Istio names it in `source_workload`: the pod name
/// without the suffixes its controller adds. A Deployment's pod
/// `catalog-v1-6d9c5f8b7-xk2lp` is `catalog-v1` (ReplicaSet's pod-template hash, then the
/// pod's random part); a DaemonSet's or Job's `fluentd-7xk2p` is `fluentd`; a StatefulSet's
/// `web-0` is `web`; anything else is its own name.
pub fn workload_of(pod: &str) -> &str {
    // Kubernetes' random suffixes use this alphabet (no vowels, no 0/1/3: no words).
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let is_random = |s: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&s.len()) && s.bytes().all(|c| SAFE.contains(&c))
    };
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if rest.is_empty() {
        return pod;
    }
    if is_random(last, 5..=5) {
        if let Some((deploy, hash)) = rest.rsplit_once('-') {
            if !deploy.is_empty() && is_random(hash, 6..=10) {
                return deploy;
            }
        }
        return rest;
    }
    if !last.is_empty() && last.len() <= 5 && last.bytes().all(|c| c.is_ascii_digit()) {
        return rest;
    }
    pod
}

/// The workload names of pods by address, for the request metrics' `source_workload` and
/// `destination_workload`: fixed for `sniff --pod` ([`Workloads::from_tags`]), kept current
/// by the node agent from its records ([`Workloads::replace`]) and shared by all its
/// captures, so a pod recorded after a capture started is named in that capture's series.
///
/// Read only when a sink builds a label set it has not cached (rare), under a read lock.
/// Every change bumps a generation, which a sink compares with its own (one atomic load
/// per exchange) to drop the label sets it cached under the old names.
#[derive(Debug, Default)]
pub struct Workloads {
    names: RwLock<HashMap<IpAddr, Box<str>>>,
    generation: AtomicU64,
}

impl Workloads {
    /// An empty directory (every address `unknown` until [`Workloads::replace`]).
    pub fn new() -> Workloads {
        Workloads::default()
    }

    /// The named pods of `tags` (a `--pod` capture's), fixed.
    pub fn from_tags(tags: Option<&PodTags>) -> Workloads {
        let w = Workloads::new();
        w.replace(
            tags.iter()
                .flat_map(|t| t.tags())
                .filter_map(|t| Some((t.pod.ip, t.pod.name.as_deref()?))),
        );
        w
    }

    /// Makes `pods` (address, pod name) the directory, each named by [`workload_of`]; an
    /// address given twice keeps its first name. True when anything changed (the
    /// generation moved on); the same pods again change nothing.
    pub fn replace<'a>(&self, pods: impl IntoIterator<Item = (IpAddr, &'a str)>) -> bool {
        let mut names: HashMap<IpAddr, Box<str>> = HashMap::new();
        for (ip, pod) in pods {
            names.entry(ip).or_insert_with(|| workload_of(pod).into());
        }
        let mut current = self.names.write().unwrap_or_else(|p| p.into_inner());
        if *current == names {
            return false;
        }
        *current = names;
        // Bumped with the lock held: a sink that sees the new generation reads the new
        // names.
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Moves on with every change; cheap enough for every exchange.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The names as they are now, for building a label set.
    pub fn read(&self) -> WorkloadNames<'_> {
        WorkloadNames(self.names.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Addresses named.
    pub fn len(&self) -> usize {
        self.read().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A read of [`Workloads`].
pub struct WorkloadNames<'a>(RwLockReadGuard<'a, HashMap<IpAddr, Box<str>>>);

impl WorkloadNames<'_> {
    /// The workload at `ip`, if a pod there is known.
    pub fn get(&self, ip: IpAddr) -> Option<&str> {
        self.0.get(&ip).map(|n| &**n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ns: &str, name: &str, uid: &str, ip: &str) -> PodRecord {
        PodRecord {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            ip: ip.parse().unwrap(),
            ips: vec![],
            netns: format!("/var/run/netns/cni-{uid}"),
            mode: "iptables".into(),
        }
    }

    #[test]
    fn records_round_trip_through_the_directory() {
        let dir = std::env::temp_dir().join(format!("pods-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(read_all(&dir).unwrap(), vec![], "no directory: no pods");
        let b = rec("shop", "b-7d4f8c9b5-x2kfp", "uid-b", "10.0.0.2");
        let a = rec("shop", "a-0", "uid-a", "10.0.0.1");
        write(&dir, &b).unwrap();
        write(&dir, &a).unwrap();
        fs::write(dir.join("half.json.tmp"), "{").unwrap();
        assert_eq!(read_all(&dir).unwrap(), vec![a.clone(), b.clone()]);
        remove(&dir, "uid-a").unwrap();
        remove(&dir, "uid-a").unwrap();
        assert_eq!(read_all(&dir).unwrap(), vec![b]);
        fs::write(dir.join("bad.json"), "{\"name\":1}").unwrap();
        let e = read_all(&dir).unwrap_err();
        assert!(e.to_string().contains("bad.json: not a pod record"), "{e}");
        assert!(matches!(
            write(&dir, &rec("x", "y", "../evil", "10.0.0.3")),
            Err(PodsError::BadUid(_))
        ));
        // Unknown keys are ignored; the optional ones may be missing.
        let r: PodRecord = serde_json::from_str(
            r#"{"namespace":"n","name":"p","uid":"u","ip":"fd00::1","future":true}"#,
        )
        .unwrap();
        assert_eq!((r.netns.as_str(), r.mode.as_str()), ("", ""));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn workloads_lose_their_controller_suffixes() {
        for (pod, workload) in [
            ("catalog-v1-6d9c5f8b7-xk2lp", "catalog-v1"),
            ("webapp-7c8d9f6b4d-q8w4n", "webapp"),
            ("fluentd-7xk2p", "fluentd"),
            ("web-0", "web"),
            ("web-12", "web"),
            ("standalone", "standalone"),
            ("my-app", "my-app"),
            ("catalog-v1-hello-world", "catalog-v1-hello-world"),
            ("-", "-"),
            ("a-aeiou", "a-aeiou"),
        ] {
            assert_eq!(workload_of(pod), workload, "{pod}");
        }
    }

    #[test]
    fn the_workload_directory_follows_its_pods() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let w = Workloads::new();
        assert!(w.is_empty());
        let g0 = w.generation();
        assert!(w.replace([
            (ip("10.0.0.1"), "catalog-v1-6d9c5f8b7-xk2lp"),
            (ip("fd00::1"), "catalog-v1-6d9c5f8b7-xk2lp"),
            (ip("10.0.0.1"), "other-0"),
        ]));
        let g1 = w.generation();
        assert_ne!(g0, g1);
        assert_eq!(
            w.read().get(ip("10.0.0.1")),
            Some("catalog-v1"),
            "first wins"
        );
        assert_eq!(w.read().get(ip("fd00::1")), Some("catalog-v1"));
        assert_eq!(w.read().get(ip("10.0.0.2")), None);
        // The same pods again: nothing changes, the sinks keep their label sets.
        assert!(!w.replace([
            (ip("fd00::1"), "catalog-v1-6d9c5f8b7-xk2lp"),
            (ip("10.0.0.1"), "catalog-v1-6d9c5f8b7-xk2lp"),
        ]));
        assert_eq!(w.generation(), g1);
        // A pod added, another gone.
        assert!(w.replace([(ip("10.0.0.2"), "ratings-0")]));
        assert_ne!(w.generation(), g1);
        assert_eq!(w.read().get(ip("10.0.0.2")), Some("ratings"));
        assert_eq!(w.read().get(ip("10.0.0.1")), None);
        assert_eq!(w.len(), 1);

        let tags = PodTags::new(vec![
            interceptor_sniff::pod::Pod {
                ip: ip("10.1.0.5"),
                name: Some("webapp-7c8d9f6b4d-q8w4n".into()),
                namespace: Some("shop".into()),
                interface: "veth1".into(),
            },
            interceptor_sniff::pod::Pod {
                ip: ip("10.1.0.6"),
                name: None,
                namespace: None,
                interface: "veth2".into(),
            },
        ]);
        let fixed = Workloads::from_tags(Some(&tags));
        assert_eq!(fixed.read().get(ip("10.1.0.5")), Some("webapp"));
        assert_eq!(
            fixed.read().get(ip("10.1.0.6")),
            None,
            "no name, no workload"
        );
        assert!(Workloads::from_tags(None).is_empty());
    }
}
