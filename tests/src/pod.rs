//! A pod for interception tests: a network namespace plus a cgroup v2, HAProxy as the
//! sidecar (uid 1337), and an upstream server in a second namespace behind a veth.
//!
//! HAProxy forwards each connection to the original destination it reads with getsockopt
//! (`server orig 0.0.0.0:0`) and stamps responses with `x-sidecar: outbound|inbound`, so a
//! response header proves which path a request took, and its absence that it bypassed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{interceptor_bin, unique, veth, Netns};

pub const POD_IP: &str = "10.231.0.1";
pub const SERVER_IP: &str = "10.231.0.2";
/// A second address of the server, for CIDR exclusions.
pub const SERVER_IP2: &str = "10.231.0.3";
pub const PROXY_UID: u32 = 1337;
pub const APP_UID: u32 = 1000;

const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// The interception mechanisms the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ebpf,

    #[allow(dead_code)]
    Iptables,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
        }
    }
}

pub struct Pod {
    pub mode: Mode,
    pub ns: Netns,
    pub server: Netns,
    pub cgroup: PathBuf,
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Pod {
    /// A pod and an upstream server, nothing intercepted yet.
    pub fn new(mode: Mode) -> Result<Pod> {
        let ns = Netns::new("pod")?;
        let server = Netns::new("srv")?;
        let (_, server_if) = veth(
            &ns,
            &format!("{POD_IP}/24"),
            &server,
            &format!("{SERVER_IP}/24"),
        )?;
        server.sh(&format!("ip addr add {SERVER_IP2}/24 dev {server_if}"))?;
        let cgroup = Path::new(CGROUP2_ROOT).join(unique("icg"));
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        Ok(Pod {
            mode,
            ns,
            server,
            cgroup,
            children: Vec::new(),
            files: Vec::new(),
        })
    }

    /// Arguments of `interceptor init` for this pod's mode, followed by `extra`.
    pub fn init_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["init".into(), "--mode".into(), self.mode.name().into()];
        if self.mode == Mode::Ebpf {
            a.extend(["--cgroup".into(), self.cgroup.display().to_string()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn cleanup_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["cleanup".into(), "--mode".into(), self.mode.name().into()];
        if self.mode == Mode::Ebpf {
            a.extend(["--cgroup".into(), self.cgroup.display().to_string()]);
        }
        a
    }

    /// Runs `interceptor ARGS` inside the pod's namespace (as root, outside the cgroup).
    pub fn interceptor(&self, args: &[String]) -> Result<Output> {
        Ok(self
            .ns
            .command(interceptor_bin().to_str().unwrap_or("interceptor"))
            .args(args)
            .output()?)
    }

    /// `init` with `extra` flags; fails with its output when it fails.
    pub fn intercept(&self, extra: &[&str]) -> Result<String> {
        let out = self.interceptor(&self.init_args(extra))?;
        if !out.status.success() {
            bail!(
                "init failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn cleanup(&self) -> Result<String> {
        let out = self.interceptor(&self.cleanup_args())?;
        if !out.status.success() {
            bail!("cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The shell prefix that moves a process into the pod's cgroup and drops to uid:gid.
    fn enter(&self, uid: u32, gid: u32) -> String {
        format!(
            "echo $$ > {}/cgroup.procs && exec setpriv --reuid={uid} --regid={gid} --clear-groups -- sh -c \"$0\"",
            self.cgroup.display()
        )
    }

    /// Runs a shell line in the pod (namespace and cgroup) as uid:gid.
    pub fn run_as(&self, uid: u32, gid: u32, line: &str) -> Result<Output> {
        Ok(self
            .ns
            .command("sh")
            .args(["-c", &self.enter(uid, gid), line])
            .output()?)
    }

    /// Starts a long-running shell line in the pod as uid:gid.
    pub fn spawn_as(&mut self, uid: u32, gid: u32, line: &str) -> Result<()> {
        let child = self
            .ns
            .command("sh")
            .args(["-c", &self.enter(uid, gid), &format!("exec {line}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    /// HAProxy as the sidecar: outbound listener 127.0.0.1:15001, inbound 0.0.0.0:15006.
    /// Inbound connections go on to the app from 127.0.0.6, as istio's inbound passthrough
    /// does, which keeps them out of the outbound redirection under iptables too.
    pub fn start_sidecar(&mut self) -> Result<()> {
        self.start_haproxy(
            "global\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend outbound\n  bind 127.0.0.1:15001\n  http-response set-header x-sidecar outbound\n  default_backend orig\n\
             frontend inbound\n  bind 0.0.0.0:15006\n  http-response set-header x-sidecar inbound\n  default_backend passthrough\n\
             backend orig\n  server orig 0.0.0.0:0\n\
             backend passthrough\n  server orig 0.0.0.0:0 source 127.0.0.6\n",
        )?;
        self.ns.wait_listen(15001)?;
        self.ns.wait_listen(15006)
    }

    /// HAProxy as the sidecar in `mode tcp`, reading and writing with splice(2) (`option
    /// splice-request` and `splice-response`): outbound listener 127.0.0.1:15001, each
    /// connection forwarded to its original destination. It adds no header (it does not
    /// parse HTTP), so what proves the path is the eBPF mode's counters. Returns the path
    /// of its stats socket, whose `show info` counts the pipes splicing took
    /// (`PipesUsed`, `PipesFree`).
    pub fn start_splicing_sidecar(&mut self) -> Result<PathBuf> {
        let stats = std::env::temp_dir().join(format!("{}.haproxy.sock", unique("sc")));
        self.files.push(stats.clone());
        self.start_haproxy(&format!(
            "global\n  maxconn 4096\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  option splice-request\n  option splice-response\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend outbound\n  bind 127.0.0.1:15001\n  default_backend orig\n\
             backend orig\n  server orig 0.0.0.0:0\n",
            stats.display()
        ))?;
        self.ns.wait_listen(15001)?;
        Ok(stats)
    }

    /// HAProxy with configuration `cfg`, as the proxy's uid/gid in the pod.
    fn start_haproxy(&mut self, cfg: &str) -> Result<()> {
        let path = std::env::temp_dir().join(format!("{}.haproxy.cfg", unique("sc")));
        fs::write(&path, cfg)?;
        self.files.push(path.clone());
        self.spawn_as(
            PROXY_UID,
            PROXY_UID,
            &format!("/usr/sbin/haproxy -f {} -db", path.display()),
        )
    }

    /// An HTTP server of the app in the pod on `port` (uid 1000, in the cgroup).
    pub fn start_app_server(&mut self, port: u16) -> Result<()> {
        let dir = self.content_dir("app")?;
        self.spawn_as(
            APP_UID,
            APP_UID,
            &format!("/usr/bin/python3 -m http.server {port} --directory {dir}"),
        )?;
        self.ns.wait_listen(port)
    }

    /// An HTTP server in the upstream namespace on all its addresses.
    pub fn start_upstream(&mut self, port: u16) -> Result<()> {
        let dir = self.content_dir("upstream")?;
        let child = self
            .server
            .command("/usr/bin/python3")
            .args(["-m", "http.server", &port.to_string(), "--directory", &dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        self.server.wait_listen(port)
    }

    fn content_dir(&mut self, who: &str) -> Result<String> {
        let dir = std::env::temp_dir().join(unique(who));
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("who"), format!("{who}\n"))?;
        // Readable by the unprivileged app user.
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status()?;
        self.files.push(dir.clone());
        Ok(dir.display().to_string())
    }

    /// `curl` from the pod as uid:gid; returns (body, x-sidecar header or None).
    pub fn get_from_pod(&self, uid: u32, gid: u32, url: &str) -> Result<Fetched> {
        let out = self.run_as(uid, gid, &format!("curl -sS -m 5 -D - {url}"))?;
        Fetched::parse(out)
    }

    /// `curl` from the upstream namespace (traffic coming into the pod).
    pub fn get_from_outside(&self, url: &str) -> Result<Fetched> {
        let out = self
            .server
            .command("curl")
            .args(["-sS", "-m", "5", "-D", "-", url])
            .output()?;
        Fetched::parse(out)
    }
}

/// One HTTP response as curl printed it.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub sidecar: Option<String>,
    pub body: String,
}

impl Fetched {
    fn parse(out: Output) -> Result<Fetched> {
        if !out.status.success() {
            bail!(
                "curl failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let sidecar = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-sidecar")
                .then(|| v.trim().to_string())
        });
        Ok(Fetched {
            status,
            sidecar,
            body: body.to_string(),
        })
    }
}

/// The `interceptor` binary when it exists; `Drop` must not panic (a second panic while a
/// failing test unwinds aborts the whole test binary).
fn existing_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("interceptor");
    bin.exists().then_some(bin)
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(bin) = existing_bin() {
            let _ = self
                .ns
                .command(bin.to_str().unwrap_or("interceptor"))
                .args(self.cleanup_args())
                .output();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for f in &self.files {
            let _ = fs::remove_dir_all(f).or_else(|_| fs::remove_file(f));
        }
    }
}
