//! Real containers for the tests: podman pods, the interceptor image built once per test run
//! (`cargo xtask image`), a busybox root filesystem for app containers, and processes entered
//! into a pod's network namespace (the sidecar).
//!
//! Nothing here returns early when the machine cannot run it: `require()` panics with what
//! is missing, so a test that cannot run fails. Pods (with their containers), spawned
//! processes and directories are removed on drop. No registry is contacted: the image is
//! built from this machine's files and podman builds its pause image from catatonit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::unique;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The containers.conf podman must use here: `$CONTAINERS_CONF` if set, else
/// tests/containers.conf (runc, cgroupfs, fixed ulimits); absolute, as buildah needs.
pub fn containers_conf() -> PathBuf {
    match std::env::var_os("CONTAINERS_CONF").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p),
        None => workspace().join("tests/containers.conf"),
    }
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(program).is_file())
}

/// Panics unless the container tests can run: root, podman, buildah, catatonit (podman's
/// pause image), nsenter, setpriv, haproxy, curl, busybox.
pub fn require() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the container tests need root (podman pods, iptables in the pod's namespace): run them as root"
    );
    let missing: Vec<&str> = [
        "podman",
        "buildah",
        "runc",
        "catatonit",
        "nsenter",
        "setpriv",
        "haproxy",
        "curl",
        "busybox",
        "iptables-save",
        "iptables-restore",
    ]
    .into_iter()
    .filter(|p| !on_path(p))
    .collect();
    assert!(
        missing.is_empty(),
        "the container tests need {}: run `sudo bash scripts/setup.sh`",
        missing.join(", ")
    );
}

/// `podman ARGS` with this machine's containers.conf; output whatever the status.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running podman {}: {e}", args.join(" ")))
}

/// `podman ARGS`, panicking with its output unless it succeeds; returns stdout, trimmed.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "`podman {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The interceptor image's reference, built by `cargo xtask image` on first use and shared
/// by every test of the process. Panics with the build's output when it fails.
pub fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let started = Instant::now();
        let out = Command::new(cargo)
            .args(["xtask", "image"])
            .current_dir(workspace())
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::null())
            .output()
            .expect("running `cargo xtask image`");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "`cargo xtask image` failed ({}):\n{stderr}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reference = stdout.lines().last().unwrap_or("").trim().to_string();
        assert!(
            reference.starts_with("localhost/interceptor:"),
            "`cargo xtask image` printed no reference on its last line:\n{stdout}\n{stderr}"
        );
        eprintln!(
            "built {reference} in {:.1} s:\n{stderr}",
            started.elapsed().as_secs_f64()
        );
        reference
    })
}

/// A podman pod (infra container running, so its network namespace exists), removed with
/// everything in it on drop, together with the processes entered into it.
pub struct Pod {
    pub name: String,
    /// PID of the infra container: `/proc/<pid>/ns/net` is the pod's network namespace.
    pub infra_pid: u32,
    procs: Vec<Child>,
}

impl Pod {
    /// Creates a pod (not started: add init containers first, then `start`).
    pub fn new(prefix: &str) -> Pod {
        let name = unique(prefix);
        podman_ok(&["pod", "create", "--name", &name]);
        Pod {
            name,
            infra_pid: 0,
            procs: Vec::new(),
        }
    }

    /// Creates an init container (`--init-ctr always`) named `<pod>-<suffix>` with `args`
    /// (options, image and command); returns its name. It runs at `start`.
    pub fn add_init(&self, suffix: &str, args: &[&str]) -> String {
        let ctr = format!("{}-{suffix}", self.name);
        let mut a = vec![
            "create",
            "--pod",
            &self.name,
            "--init-ctr",
            "always",
            "--name",
            &ctr,
        ];
        a.extend_from_slice(args);
        podman_ok(&a);
        ctr
    }

    /// `podman pod start`: the infra container, then the init containers one by one. Returns
    /// whether it succeeded (it fails when an init container does) and its output.
    pub fn start(&mut self) -> Output {
        let out = podman(&["pod", "start", &self.name]);
        if let Some(pid) = self.infra_pid() {
            self.infra_pid = pid;
        }
        out
    }

    fn infra_pid(&self) -> Option<u32> {
        let infra = String::from_utf8_lossy(
            &podman(&[
                "pod",
                "inspect",
                "--format",
                "{{.InfraContainerID}}",
                &self.name,
            ])
            .stdout,
        )
        .trim()
        .to_string();
        let pid = String::from_utf8_lossy(
            &podman(&["inspect", "--format", "{{.State.Pid}}", &infra]).stdout,
        )
        .trim()
        .parse()
        .ok()?;
        (pid != 0).then_some(pid)
    }

    /// `podman run --pod <pod> --name <pod>-<suffix> ARGS` (the container is kept for its
    /// logs and exit code, and removed with the pod).
    pub fn run(&self, suffix: &str, args: &[&str]) -> Output {
        let ctr = format!("{}-{suffix}", self.name);
        let mut a = vec!["run", "--pod", &self.name, "--name", &ctr];
        a.extend_from_slice(args);
        podman(&a)
    }

    /// The pod's network namespace.
    pub fn netns(&self) -> String {
        assert!(self.infra_pid != 0, "pod {} is not started", self.name);
        format!("/proc/{}/ns/net", self.infra_pid)
    }

    /// A command run in the pod's network namespace (as root, on the host's filesystem).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a shell line in the pod's network namespace; panics with its output on failure.
    pub fn sh(&self, line: &str) -> String {
        let out = self.command("sh").args(["-c", line]).output().unwrap();
        assert!(
            out.status.success(),
            "in pod {}: `{line}` failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod's IPv4 address on eth0 (podman's bridge network).
    pub fn ip(&self) -> String {
        let out = self.sh("ip -4 -o addr show dev eth0");
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on eth0 in pod {}: {out}", self.name))
            .to_string()
    }

    /// Starts `program ARGS` in the pod's network namespace as uid:gid (setpriv, no
    /// supplementary groups); killed on drop.
    pub fn spawn_as(&mut self, uid: u32, gid: u32, program: &str, args: &[&str]) {
        let child = self
            .command("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
                program,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in pod {}: {e}", self.name));
        self.procs.push(child);
    }

    /// The pod's cgroup v2 on the host (podman's cgroupfs manager puts each container's
    /// cgroup below it, as kubelet does with a pod's).
    pub fn cgroup(&self) -> PathBuf {
        let path = podman_ok(&["pod", "inspect", "--format", "{{.CgroupPath}}", &self.name]);
        assert!(
            path.starts_with('/'),
            "pod {} has no cgroup path: {path:?}",
            self.name
        );
        cgroup2_root().join(path.trim_start_matches('/'))
    }

    /// Starts `program ARGS` in the pod's network namespace as uid:gid from inside
    /// `cgroup` (a container's cgroup the test made below the pod's: programs attached to
    /// the pod's cgroup see it); killed on drop.
    pub fn spawn_in_cgroup_as(
        &mut self,
        cgroup: &Path,
        uid: u32,
        gid: u32,
        program: &str,
        args: &[&str],
    ) {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} -- setpriv --reuid={uid} \
             --regid={gid} --clear-groups -- \"$0\" \"$@\"",
            cgroup.display(),
            self.netns()
        );
        let child = Command::new("sh")
            .args(["-c", &script, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in pod {}: {e}", self.name));
        self.procs.push(child);
    }

    /// Waits until something listens on TCP `port` in the pod.
    pub fn wait_listen(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self
                .command("ss")
                .args(["-Hltn", &format!("sport = :{port}")])
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nothing listens on port {port} in pod {} after 10 s",
            self.name
        );
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = podman(&["pod", "rm", "--force", "--time", "0", &self.name]);
    }
}

/// Where the host's whole cgroup2 hierarchy is mounted: /sys/fs/cgroup on a cgroup v2
/// host, /sys/fs/cgroup/unified on a hybrid one (cgroup v1 controllers, as here).
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            (post.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
        })
        .expect("no cgroup2 hierarchy mounted: the eBPF mode needs cgroup v2")
}

/// `podman logs` of a container, stdout and stderr together.
pub fn logs(ctr: &str) -> String {
    let out = podman(&["logs", ctr]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A container's exit code as podman recorded it.
pub fn exit_code(ctr: &str) -> i32 {
    let code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", ctr]);
    code.parse()
        .unwrap_or_else(|_| panic!("exit code of {ctr}: {code:?}"))
}

/// A root filesystem for `podman run --rootfs`: busybox-static and links for `applets`
/// (`sh`, `nc`, ...); removed on drop. Readable by any uid.
pub struct Rootfs(pub PathBuf);

impl Rootfs {
    pub fn busybox(applets: &[&str]) -> Rootfs {
        let dir = std::env::temp_dir().join(unique("icrootfs"));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["etc", "proc", "sys", "dev", "tmp", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("busybox (busybox-static) not installed: run `sudo bash scripts/setup.sh`");
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        for a in applets {
            std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
        }
        Command::new("chmod")
            .arg("-R")
            .arg("a+rX")
            .arg(&dir)
            .status()
            .unwrap();
        Rootfs(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
