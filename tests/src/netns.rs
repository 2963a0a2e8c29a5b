//! Network namespaces for tests, made with `ip netns` and entered with `nsenter` (not
//! `ip netns exec`, which remounts /sys and hides /sys/fs/cgroup and /sys/fs/bpf).

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name (interface names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command on the host and fails with its stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// A network namespace that is deleted on drop, with its processes killed.
pub struct Netns {
    pub name: String,
    procs: Vec<Child>,
}

impl Netns {
    /// Creates a namespace with loopback up.
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns {
            name,
            procs: Vec::new(),
        };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a shell line inside the namespace; fails with its output when it fails.
    pub fn sh(&self, line: &str) -> Result<String> {
        let out = self.command("sh").args(["-c", line]).output()?;
        if !out.status.success() {
            bail!(
                "in netns {}: `{line}` failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell line inside the namespace and returns its whole output, failing or not.
    pub fn sh_output(&self, line: &str) -> Result<Output> {
        Ok(self.command("sh").args(["-c", line]).output()?)
    }

    /// Runs a shell line inside the namespace as `uid:gid` (via setpriv).
    pub fn sh_as(&self, uid: u32, gid: u32, line: &str) -> Result<Output> {
        Ok(self
            .command("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
                "sh",
                "-c",
                line,
            ])
            .output()?)
    }

    /// Starts a long-running shell line inside the namespace as `uid:gid`; it is killed when
    /// the namespace is dropped.
    pub fn spawn_as(&mut self, uid: u32, gid: u32, line: &str) -> Result<()> {
        let child = self
            .command("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
                "sh",
                "-c",
                &format!("exec {line}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.procs.push(child);
        Ok(())
    }

    /// Starts a long-running shell line inside the namespace as root.
    pub fn spawn(&mut self, line: &str) -> Result<()> {
        self.spawn_as(0, 0, line)
    }

    /// Waits until something listens on TCP `port` in the namespace.
    pub fn wait_listen(&self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self.sh_output(&format!("ss -Hltn 'sport = :{port}'"))?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "nothing listens on port {port} in netns {} after 10 s",
            self.name
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        // Processes that forked away from the ones we started (nginx workers) still hold
        // the namespace; kill everything in it before deleting.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects the pod namespace `pod` to this (the node's) namespace as routing CNIs (Calico,
/// ptp) do: a veth whose node end holds the gateway `gw` as a /32 and a /32 route to the
/// pod's `ip`; in the pod, `ip`/32 on its end, a route to `gw` and the default route through
/// it. Returns the node end's name.
pub fn routed_pod_link(pod: &Netns, ip: &str, gw: &str) -> Result<String> {
    let host_if = unique("vh");
    let pod_if = unique("vp");
    run(
        "ip",
        &[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &pod.name,
        ],
    )?;
    run("ip", &["addr", "add", &format!("{gw}/32"), "dev", &host_if])?;
    run("ip", &["link", "set", &host_if, "up"])?;
    run(
        "ip",
        &["route", "add", &format!("{ip}/32"), "dev", &host_if],
    )?;
    pod.sh(&format!(
        "ip addr add {ip}/32 dev {pod_if} && ip link set {pod_if} up && ip route add {gw} dev {pod_if} && ip route add default via {gw}"
    ))?;
    Ok(host_if)
}

/// Connects namespace `a` and `b` with a veth pair, addresses given in CIDR form
/// (`10.1.0.1/24`). Returns the two interface names.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> Result<(String, String)> {
    let ia = unique("va");
    let ib = unique("vb");
    run(
        "ip",
        &[
            "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns",
            &b.name,
        ],
    )?;
    for (ns, ifc, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
        let fam = if addr.contains(':') { "-6" } else { "-4" };
        let nodad = if addr.contains(':') { " nodad" } else { "" };
        ns.sh(&format!(
            "ip {fam} addr add {addr} dev {ifc}{nodad} && ip link set {ifc} up"
        ))?;
    }
    Ok((ia, ib))
}
