//! The plugin's record of each pod it intercepted: `<state_dir>/pods/<container id>.json`,
//! written atomically (a temporary `.json.tmp` file renamed over it) when ADD succeeds and
//! removed by DEL. The agent reads them to know the node's pods (so it loses nothing when
//! it restarts), `interceptor status` lists them, and `interceptor sniff --pod` and the
//! metrics' pod labels read the same files (interceptor-serve's `pods`, whose keys are a
//! subset of these).
//!
//! ```json
//! {"version":1,"container_id":"4f0c…","ifname":"eth0","namespace":"istioinaction",
//!  "name":"webapp","uid":"5f0e…","ip":"10.88.0.7","ips":["10.88.0.7"],
//!  "netns":"/run/netns/cni-1a2b…","netns_cookie":4099,"mode":"iptables",
//!  "args":["-p","15001","-z","15006",…],"iptables_rules":["4 nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",…],
//!  "added_at":"2024-05-01T12:34:56Z"}
//! ```
//!
//! `iptables_rules` (iptables mode) are the lines of `iptables-save` in the pod's
//! namespace that belong to the interception, as they were right after ADD: CHECK and the
//! agent compare the namespace against them. A single lock file, `<state_dir>/pods.lock`,
//! orders the plugin's ADD/DEL/CHECK and the agent's repairs, so a repair never brings
//! back what a DEL just removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// The record format's version.
pub const VERSION: u32 = 1;
/// The records' directory under the state dir.
pub const PODS_DIR: &str = "pods";
/// The lock file under the state dir.
pub const LOCK_FILE: &str = "pods.lock";

/// One intercepted pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub version: u32,
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
    /// The pod's primary address (from the previous plugin's result; the unspecified
    /// address when it had none).
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// The namespace path as the runtime gave it in `CNI_NETNS`.
    pub netns: String,
    /// The namespace's cookie when ADD ran: tells a reused path from the namespace we set up.
    pub netns_cookie: u64,
    /// `iptables` or `ebpf`.
    pub mode: String,
    /// The istio-iptables arguments the interception was made from.
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iptables_rules: Vec<String>,
    pub added_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a pod record: {source}", .path.display())]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("container id {0:?} cannot name a record file")]
    BadId(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The records under one state dir.
#[derive(Clone, Debug)]
pub struct Records {
    state_dir: PathBuf,
}

impl Records {
    pub fn new(state_dir: &Path) -> Records {
        Records {
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.state_dir.join(PODS_DIR)
    }

    pub fn path(&self, container_id: &str) -> Result<PathBuf, RecordError> {
        let plain = !container_id.is_empty()
            && !container_id.starts_with('.')
            && container_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !plain {
            return Err(RecordError::BadId(container_id.to_string()));
        }
        Ok(self.dir().join(format!("{container_id}.json")))
    }

    /// Takes the state dir's lock (blocking), creating the directories as needed.
    pub fn lock(&self) -> Result<Flock<File>, RecordError> {
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.state_dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| RecordError::Io {
            path,
            source: io::Error::from(errno),
        })
    }

    /// Writes `rec` atomically: a reader sees the old file or the new one.
    pub fn write(&self, rec: &PodRecord) -> Result<PathBuf, RecordError> {
        let path = self.path(&rec.container_id)?;
        let dir = self.dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec(rec).map_err(|source| RecordError::Format {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&text).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        Ok(path)
    }

    /// The record of `container_id`, if there is one.
    pub fn load(&self, container_id: &str) -> Result<Option<PodRecord>, RecordError> {
        let path = self.path(container_id)?;
        read(&path)
    }

    /// Removes the record of `container_id`; `Ok(false)` when there was none.
    pub fn remove(&self, container_id: &str) -> Result<bool, RecordError> {
        let path = self.path(container_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every record, sorted by namespace and name; an unreadable one is an error in the
    /// list (so one bad file does not hide the others).
    pub fn list(&self) -> Result<Vec<Result<PodRecord, RecordError>>, RecordError> {
        let dir = self.dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match read(&path) {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        out.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => (&a.namespace, &a.name, &a.container_id).cmp(&(
                &b.namespace,
                &b.name,
                &b.container_id,
            )),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(a), Err(b)) => a.to_string().cmp(&b.to_string()),
        });
        Ok(out)
    }
}

fn read(path: &Path) -> Result<Option<PodRecord>, RecordError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        // Removed between the listing and the read: the pod went.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| RecordError::Format {
            path: path.to_path_buf(),
            source,
        })
}

/// The pod's addresses from the previous plugin's result (`ips[].address`, CIDR form).
pub fn prev_result_ips(prev: Option<&serde_json::Value>) -> Vec<IpAddr> {
    let Some(ips) = prev.and_then(|p| p.get("ips")).and_then(|i| i.as_array()) else {
        return Vec::new();
    };
    ips.iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &str) -> PodRecord {
        PodRecord {
            version: VERSION,
            container_id: id.into(),
            ifname: "eth0".into(),
            namespace: "istioinaction".into(),
            name: "webapp".into(),
            uid: "5f0e".into(),
            ip: "10.88.0.7".parse().unwrap(),
            ips: vec!["10.88.0.7".parse().unwrap()],
            netns: "/run/netns/cni-1".into(),
            netns_cookie: 4099,
            mode: "iptables".into(),
            args: vec!["-p".into(), "15001".into()],
            iptables_rules: vec!["4 nat -A OUTPUT -p tcp -j ISTIO_OUTPUT".into()],
            added_at: "2024-05-01T12:34:56Z".into(),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icagent-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_round_trip_and_go() {
        let dir = temp_dir("rec");
        let r = Records::new(&dir);
        assert!(r.list().unwrap().is_empty());
        assert_eq!(r.load("abc").unwrap(), None);
        let a = sample("abc");
        r.write(&a).unwrap();
        let mut b = sample("def");
        b.name = "aaa".into();
        r.write(&b).unwrap();
        fs::write(r.dir().join("half.json.tmp"), "{").unwrap();
        let all: Vec<PodRecord> = r.list().unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(all, vec![b.clone(), a.clone()]);
        assert_eq!(r.load("abc").unwrap(), Some(a));
        assert!(r.remove("abc").unwrap());
        assert!(!r.remove("abc").unwrap());
        let _lock = r.lock().unwrap();
        assert!(matches!(r.path("../x"), Err(RecordError::BadId(_))));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn interceptor_serve_reads_our_records() {
        let dir = temp_dir("serve");
        let r = Records::new(&dir);
        r.write(&sample("abc")).unwrap();
        let pods = interceptor_serve::pods::read_all(&r.dir()).unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "webapp");
        assert_eq!(pods[0].ip.to_string(), "10.88.0.7");
        assert_eq!(pods[0].mode, "iptables");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_from_the_previous_result() {
        let prev = serde_json::json!({"ips":[{"address":"10.88.0.7/16","gateway":"10.88.0.1"},
            {"address":"fd00::7/64"},{"address":"garbage"}]});
        assert_eq!(
            prev_result_ips(Some(&prev)),
            vec![
                "10.88.0.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert!(prev_result_ips(None).is_empty());
    }
}
