//! The CNI request log: how the short-lived plugin processes tell the agent what they did.
//!
//! Each plugin run appends one JSON line to `<state_dir>/cni-requests.log`:
//!
//! ```json
//! {"time":"2024-05-01T12:34:56Z","container_id":"4f0c…","pod":"istioinaction/webapp","command":"ADD","result":"ok","code":null}
//! ```
//!
//! `result` is `ok`, `skipped` (ADD of a pod that is not meshed) or `error` (with the CNI
//! error `code`). The agent counts them for `interceptor_cni_requests_total`. Nothing is
//! lost when the agent restarts: the totals of lines already consumed live in
//! `cni-requests.totals.json`, and the agent recounts the live log from its start.
//!
//! The log is compacted when it grows past [`COMPACT_AT`]: the agent renames it to a
//! segment (`cni-requests.<nanos>.segment`), waits for the lock every appender holds
//! while writing, counts the segment, writes the totals (naming the segment as consumed)
//! and removes it. A segment found at start is counted unless the totals name it, so a
//! crash at any point neither loses nor double-counts. An appender that opened the log
//! before the rename sees, once it holds the lock, that the path now names another file,
//! and reopens it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const LOG_FILE: &str = "cni-requests.log";
pub const TOTALS_FILE: &str = "cni-requests.totals.json";
const SEGMENT_PREFIX: &str = "cni-requests.";
const SEGMENT_SUFFIX: &str = ".segment";
/// The live log's size at which the agent compacts it.
pub const COMPACT_AT: u64 = 1 << 20;

/// One plugin run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub time: String,
    pub container_id: String,
    /// `namespace/name`, empty when the runtime did not say.
    pub pod: String,
    pub command: String,
    pub result: String,
    pub code: Option<u32>,
}

/// Appends `req` to the log under `state_dir`.
pub fn append(state_dir: &Path, req: &Request) -> io::Result<()> {
    let path = state_dir.join(LOG_FILE);
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    // A few tries: each retry means the agent compacted between our open and our lock.
    for _ in 0..8 {
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut locked =
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        let ours = locked.metadata()?.ino();
        match fs::metadata(&path) {
            Ok(m) if m.ino() == ours => {
                // One write of the whole line: appends of concurrent runs do not interleave.
                return locked.write_all(&line);
            }
            _ => continue,
        }
    }
    Err(io::Error::other(format!(
        "{}: kept being replaced while appending",
        path.display()
    )))
}

/// Counts by (command, result).
pub type Counts = BTreeMap<(String, String), u64>;

#[derive(Default, Serialize, Deserialize)]
struct Totals {
    counts: Vec<(String, String, u64)>,
    /// Segments whose lines `counts` includes.
    consumed: Vec<String>,
}

/// The agent's side: the running totals.
pub struct RequestCounter {
    dir: PathBuf,
    /// From the totals file (consumed segments).
    persisted: Counts,
    /// From the live log, up to `offset`.
    live: Counts,
    offset: u64,
    inode: Option<u64>,
    /// An incomplete last line, kept until its newline arrives.
    partial: Vec<u8>,
}

impl RequestCounter {
    /// Reads the totals, finishes any compaction a previous agent left half done, and
    /// counts the live log.
    pub fn open(state_dir: &Path) -> io::Result<RequestCounter> {
        fs::create_dir_all(state_dir)?;
        let mut c = RequestCounter {
            dir: state_dir.to_path_buf(),
            persisted: Counts::new(),
            live: Counts::new(),
            offset: 0,
            inode: None,
            partial: Vec::new(),
        };
        let totals = c.load_totals()?;
        for (cmd, res, n) in &totals.counts {
            *c.persisted.entry((cmd.clone(), res.clone())).or_default() += n;
        }
        let mut segments: Vec<String> = fs::read_dir(state_dir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(SEGMENT_PREFIX) && n.ends_with(SEGMENT_SUFFIX))
            .collect();
        segments.sort();
        for seg in segments {
            let path = state_dir.join(&seg);
            if !totals.consumed.contains(&seg) {
                let mut counts = Counts::new();
                count_lines(&fs::read(&path)?, &mut counts);
                add(&mut c.persisted, &counts);
                c.save_totals(&seg)?;
            }
            fs::remove_file(&path)?;
        }
        c.poll()?;
        Ok(c)
    }

    /// All requests so far.
    pub fn counts(&self) -> Counts {
        let mut all = self.persisted.clone();
        add(&mut all, &self.live);
        all
    }

    /// Reads what was appended since the last poll; compacts a large log.
    pub fn poll(&mut self) -> io::Result<()> {
        let path = self.dir.join(LOG_FILE);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let ino = f.metadata()?.ino();
        if self.inode != Some(ino) {
            // Someone else's file (the log was removed by hand): start over on it.
            self.inode = Some(ino);
            self.offset = 0;
            self.partial.clear();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=end).collect();
            count_lines(&complete, &mut self.live);
        }
        if self.offset >= COMPACT_AT {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> io::Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seg = format!("{SEGMENT_PREFIX}{nanos:020}{SEGMENT_SUFFIX}");
        let seg_path = self.dir.join(&seg);
        fs::rename(self.dir.join(LOG_FILE), &seg_path)?;
        // Appenders that hold the lock finish first; later ones see the rename.
        let locked = Flock::lock(File::open(&seg_path)?, FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        let mut rest = Vec::new();
        let mut f: &File = &locked;
        f.seek(SeekFrom::Start(self.offset))?;
        f.read_to_end(&mut rest)?;
        self.partial.extend_from_slice(&rest);
        // Whatever is in the segment is complete now: a partial line is counted as is.
        if !self.partial.ends_with(b"\n") && !self.partial.is_empty() {
            self.partial.push(b'\n');
        }
        let complete = std::mem::take(&mut self.partial);
        count_lines(&complete, &mut self.live);
        let live = std::mem::take(&mut self.live);
        add(&mut self.persisted, &live);
        self.save_totals(&seg)?;
        drop(locked);
        fs::remove_file(&seg_path)?;
        self.offset = 0;
        self.inode = None;
        Ok(())
    }

    fn load_totals(&self) -> io::Result<Totals> {
        match fs::read(self.dir.join(TOTALS_FILE)) {
            Ok(t) => serde_json::from_slice(&t).map_err(|e| {
                io::Error::other(format!("{}: {e}", self.dir.join(TOTALS_FILE).display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Totals::default()),
            Err(e) => Err(e),
        }
    }

    fn save_totals(&self, consumed: &str) -> io::Result<()> {
        let t = Totals {
            counts: self
                .persisted
                .iter()
                .map(|((c, r), n)| (c.clone(), r.clone(), *n))
                .collect(),
            consumed: vec![consumed.to_string()],
        };
        let path = self.dir.join(TOTALS_FILE);
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&t).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    }
}

fn add(into: &mut Counts, from: &Counts) {
    for (k, n) in from {
        *into.entry(k.clone()).or_default() += n;
    }
}

/// Counts each line that parses; other lines (a torn write after a crash) are skipped.
fn count_lines(bytes: &[u8], counts: &mut Counts) {
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(r) = serde_json::from_slice::<Request>(line) {
            *counts.entry((r.command, r.result)).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cmd: &str, result: &str) -> Request {
        Request {
            time: "2024-05-01T12:34:56Z".into(),
            container_id: "abc".into(),
            pod: "ns/p".into(),
            command: cmd.into(),
            result: result.into(),
            code: None,
        }
    }

    fn key(c: &str, r: &str) -> (String, String) {
        (c.into(), r.into())
    }

    #[test]
    fn counts_survive_restarts_and_compaction() {
        let dir = std::env::temp_dir().join(format!("icagent-req-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        append(&dir, &req("ADD", "ok")).unwrap();
        append(&dir, &req("ADD", "ok")).unwrap();
        let mut c = RequestCounter::open(&dir).unwrap();
        assert_eq!(c.counts()[&key("ADD", "ok")], 2);
        append(&dir, &req("DEL", "ok")).unwrap();
        // A torn line is counted once its newline arrives.
        fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap()
            .write_all(br#"{"time":"t","container_id":"x","pod":"","command":"CHECK","#)
            .unwrap();
        c.poll().unwrap();
        assert_eq!(c.counts()[&key("DEL", "ok")], 1);
        assert!(!c.counts().contains_key(&key("CHECK", "error")));
        fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap()
            .write_all(b"\"result\":\"error\",\"code\":101}\n")
            .unwrap();
        c.poll().unwrap();
        assert_eq!(c.counts()[&key("CHECK", "error")], 1);

        c.compact().unwrap();
        assert!(!dir.join(LOG_FILE).exists());
        append(&dir, &req("ADD", "skipped")).unwrap();
        c.poll().unwrap();
        let want = c.counts();
        assert_eq!(want[&key("ADD", "ok")], 2);
        assert_eq!(want[&key("ADD", "skipped")], 1);

        // A new agent sees the same; a segment left by a crash after the totals were
        // written is not counted twice, one left before is counted.
        drop(c);
        let c2 = RequestCounter::open(&dir).unwrap();
        assert_eq!(c2.counts(), want);
        let totals: Totals =
            serde_json::from_slice(&fs::read(dir.join(TOTALS_FILE)).unwrap()).unwrap();
        fs::write(dir.join(&totals.consumed[0]), b"{\"time\":\"t\",\"container_id\":\"x\",\"pod\":\"\",\"command\":\"ADD\",\"result\":\"ok\",\"code\":null}\n").unwrap();
        fs::write(
            dir.join(format!("{SEGMENT_PREFIX}99999999999999999999{SEGMENT_SUFFIX}")),
            b"{\"time\":\"t\",\"container_id\":\"x\",\"pod\":\"\",\"command\":\"GC\",\"result\":\"ok\",\"code\":null}\n",
        )
        .unwrap();
        let c3 = RequestCounter::open(&dir).unwrap();
        assert_eq!(c3.counts()[&key("ADD", "ok")], 2);
        assert_eq!(c3.counts()[&key("GC", "ok")], 1);
        let c4 = RequestCounter::open(&dir).unwrap();
        assert_eq!(c4.counts(), c3.counts());
        let _ = fs::remove_dir_all(&dir);
    }
}
