//! `cargo xtask image`: the init-container image, built offline with buildah.
//!
//! The image holds what `interceptor init` (alias `istio-iptables`) runs and nothing else:
//! no shell, no package manager. From this machine's Debian:
//!
//! - `/usr/local/bin/interceptor`: the release binary, stripped (target/release keeps its
//!   symbols);
//! - `xtables-nft-multi` and `xtables-legacy-multi` with every `/usr/sbin` link to them
//!   (`iptables-nft-restore`, `ip6tables-legacy-save`, ...; not arptables/ebtables) and
//!   the names Debian's alternatives give (`iptables`, `iptables-save`, ... pointing at
//!   the nft variant, the system default `init` falls back to);
//! - iproute2's `ip` (TPROXY routes, the IPv6 `::6` address);
//! - the xtables extension modules, all but ebtables' and arptables' (which ones the rules
//!   load depends on the flags), and every shared library the above load, found by
//!   walking `ldd`, dynamic loader included;
//! - `/etc/passwd` and `/etc/group` (root, istio-proxy 1337, nobody) for `-u`/`-g` given by
//!   name and the owner match's lookups, `/etc/nsswitch.conf` (files only: glibc's files
//!   backend is built into libc), `/etc/protocols`;
//! - empty `/run` (iptables-legacy's `/run/xtables.lock`), `/tmp`, and mount points.
//!
//! Tagged `localhost/interceptor:<workspace version>` and `:latest`; the reference is the
//! last line of stdout, progress goes to stderr. No registry is contacted.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};

pub const REPOSITORY: &str = "localhost/interceptor";
const ENTRYPOINT: &str = "/usr/local/bin/interceptor";
const PATH_ENV: &str = "/usr/local/bin:/usr/sbin:/usr/bin";
/// podman/buildah settings this project's machines need (runc, cgroupfs, fixed ulimits).
pub const CONTAINERS_CONF: &str = "tests/containers.conf";

const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n\
istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/usr/sbin/nologin\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nistio-proxy:x:1337:\nnogroup:x:65534:\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n\
networks: files\nprotocols: files\nservices: files\n";

/// Builds the image and returns its versioned reference.
pub fn build(root: &Path) -> Result<String> {
    for tool in ["buildah", "podman"] {
        if which(tool).is_none() {
            bail!("{tool} not found in PATH: run `sudo bash scripts/setup.sh` (installs podman, buildah, runc)");
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    let reference = format!("{REPOSITORY}:{version}");

    let binary = build_binary(root)?;
    let work = target_dir(root).join("image");
    let rootfs = work.join("rootfs");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).with_context(|| format!("emptying {}", rootfs.display()))?;
    }
    fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    let files = stage(&binary, &rootfs)?;
    eprintln!(
        "image: staged {} files in {}",
        files.len(),
        rootfs.display()
    );

    let latest = format!("{REPOSITORY}:latest");
    // The images the two tags name now: a rebuild leaves them untagged.
    let previous: Vec<String> = [&reference, &latest]
        .into_iter()
        .filter_map(|r| podman(root, &["image", "inspect", "--format", "{{.Id}}", r]).ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|id| !id.is_empty())
        .collect();

    let ctr = buildah(root, &["from", "scratch"])?;
    let ctr = String::from_utf8_lossy(&ctr.stdout).trim().to_string();
    let committed = (|| -> Result<String> {
        let src = format!("{}/", rootfs.display());
        buildah(root, &["copy", "--quiet", &ctr, &src, "/"])?;
        let mut config: Vec<String> = vec![
            "config".into(),
            "--entrypoint".into(),
            format!("[\"{ENTRYPOINT}\"]"),
            "--env".into(),
            format!("PATH={PATH_ENV}"),
            "--workingdir".into(),
            "/".into(),
            "--user".into(),
            "0:0".into(),
        ];
        for (k, v) in labels(root, version) {
            config.push("--label".into());
            config.push(format!("org.opencontainers.image.{k}={v}"));
        }
        config.push(ctr.clone());
        let args: Vec<&str> = config.iter().map(String::as_str).collect();
        buildah(root, &args)?;
        let out = buildah(
            root,
            &[
                "commit", "--quiet", "--rm", "--format", "oci", &ctr, &reference,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })();
    let id = match committed {
        Ok(id) => id,
        Err(e) => {
            let _ = buildah(root, &["rm", &ctr]);
            return Err(e);
        }
    };
    buildah(root, &["tag", &reference, &latest])?;
    // Drop the images this one replaced, unless a container still uses them.
    for old in previous {
        if !id.starts_with(old.as_str()) && !old.starts_with(id.as_str()) {
            let _ = podman(root, &["rmi", &old]);
        }
    }

    let size: u64 = podman(
        root,
        &["image", "inspect", "--format", "{{.Size}}", &reference],
    )
    .map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    })?;
    let gz = gzipped_size(&rootfs).ok();
    eprintln!(
        "image: {reference} (also :latest), id {}, {} MB{}; for comparison istio's \
         docker.io/istio/proxyv2, which istio-init runs, is about 164 MB (the size \
         chainguard-images/images#1323 gives for it, 2023)",
        &id[..id.len().min(12)],
        mb(size),
        gz.map(|g| format!(" ({} MB as a gzip-compressed layer)", mb(g)))
            .unwrap_or_default()
    );
    Ok(reference)
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// `cargo build --release --bin interceptor`; returns target/release/interceptor.
fn build_binary(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("image: cargo build --release --bin interceptor");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "interceptor"])
        .current_dir(root)
        .stdout(std::io::stderr())
        .status()
        .context("running `cargo build --release --bin interceptor`")?;
    if !status.success() {
        bail!("`cargo build --release --bin interceptor` failed ({status})");
    }
    let bin = target_dir(root).join("release/interceptor");
    if !bin.is_file() {
        bail!(
            "{} missing after `cargo build --release --bin interceptor`",
            bin.display()
        );
    }
    Ok(bin)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"))
}

/// Fills `rootfs`; returns the files (not links, not directories) it copied, by image path.
fn stage(binary: &Path, rootfs: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut s = Stager {
        rootfs: rootfs.to_path_buf(),
        files: BTreeSet::new(),
    };
    // Merged /usr: keep the host's top-level links (/lib64 -> usr/lib64 carries the
    // loader's path, PT_INTERP /lib64/ld-linux-x86-64.so.2).
    for top in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = fs::read_link(Path::new("/").join(top)) {
            s.link(&target, Path::new("/").join(top))?;
        }
    }
    for dir in [
        "usr/local/bin",
        "usr/sbin",
        "usr/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "var",
    ] {
        s.dir(dir, 0o755)?;
    }
    s.dir("tmp", 0o1777)?;
    s.link(Path::new("../run"), "/var/run")?;

    // The binary, stripped.
    let dest = s.path(ENTRYPOINT);
    run(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&dest)
            .arg(binary),
        "strip --strip-all",
    )?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    s.files.insert(ENTRYPOINT.into());
    let mut elves = vec![binary.to_path_buf()];

    // iptables: both multi-call binaries, their links, and the alternatives' names.
    let nft = which("xtables-nft-multi").ok_or_else(|| {
        anyhow!("xtables-nft-multi not found: install iptables (scripts/setup.sh)")
    })?;
    let legacy = which("xtables-legacy-multi").ok_or_else(|| {
        anyhow!("xtables-legacy-multi not found: install iptables (scripts/setup.sh)")
    })?;
    for multi in [&nft, &legacy] {
        let name = multi.file_name().unwrap();
        s.copy(multi, Path::new("/usr/sbin").join(name))?;
        elves.push(multi.clone());
        let dir = multi.parent().unwrap();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let Ok(target) = fs::read_link(entry.path()) else {
                continue;
            };
            // arptables and ebtables share the binary; init never runs them.
            let link = entry.file_name().to_string_lossy().into_owned();
            if target.file_name() == Some(name)
                && !link.starts_with("arptables")
                && !link.starts_with("ebtables")
            {
                s.link(
                    Path::new(name),
                    Path::new("/usr/sbin").join(entry.file_name()),
                )?;
            }
        }
    }
    for base in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            let link = format!("/usr/sbin/{base}{suffix}");
            s.link(Path::new(&format!("{base}-nft{suffix}")), &link)?;
        }
    }

    // iproute2.
    let ip =
        which("ip").ok_or_else(|| anyhow!("ip not found: install iproute2 (scripts/setup.sh)"))?;
    let ip = fs::canonicalize(&ip)?;
    s.copy(&ip, "/usr/bin/ip")?;
    elves.push(ip);

    // Extension modules: the directory beside libxtables.
    let libxtables = ldd(&nft)?
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libxtables.so"))
        })
        .ok_or_else(|| anyhow!("`ldd {}` lists no libxtables", nft.display()))?;
    let modules = fs::canonicalize(libxtables.parent().unwrap())?.join("xtables");
    for entry in fs::read_dir(&modules).with_context(|| format!("listing {}", modules.display()))? {
        let p = entry?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let bridge_or_arp = name.starts_with("libebt_") || name.starts_with("libarpt_");
        if p.extension().is_some_and(|e| e == "so") && !bridge_or_arp {
            s.copy(&p, &p)?;
            elves.push(p);
        }
    }

    // Every library any of them loads (ldd resolves the whole tree), loader included.
    let mut libs = BTreeSet::new();
    for elf in &elves {
        libs.extend(ldd(elf)?);
    }
    for lib in libs {
        // Under the directory's real path (/lib/x86_64-linux-gnu -> /usr/lib/...), with the
        // name the loader asks for, holding the file the link points to.
        let dir = fs::canonicalize(lib.parent().unwrap())?;
        s.copy(&lib, dir.join(lib.file_name().unwrap()))?;
    }

    // Users, name service, protocols.
    s.write("/etc/passwd", PASSWD)?;
    s.write("/etc/group", GROUP)?;
    s.write("/etc/nsswitch.conf", NSSWITCH)?;
    if Path::new("/etc/protocols").is_file() {
        s.copy(Path::new("/etc/protocols"), "/etc/protocols")?;
    }
    Ok(s.files)
}

struct Stager {
    rootfs: PathBuf,
    files: BTreeSet<PathBuf>,
}

impl Stager {
    /// `image_path` (absolute in the image) under the staging directory.
    fn path(&self, image_path: impl AsRef<Path>) -> PathBuf {
        let rel = image_path
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(image_path.as_ref());
        self.rootfs.join(rel)
    }

    fn parent_dirs(&self, p: &Path) -> Result<()> {
        let parent = p.parent().unwrap();
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
    }

    fn dir(&self, image_path: &str, mode: u32) -> Result<()> {
        let p = self.path(image_path);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn copy(&mut self, from: &Path, image_path: impl AsRef<Path>) -> Result<()> {
        let to = self.path(&image_path);
        self.parent_dirs(&to)?;
        fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        self.files.insert(image_path.as_ref().to_path_buf());
        Ok(())
    }

    fn link(&self, target: &Path, image_path: impl AsRef<Path>) -> Result<()> {
        let at = self.path(&image_path);
        self.parent_dirs(&at)?;
        if at.symlink_metadata().is_ok() {
            fs::remove_file(&at)?;
        }
        symlink(target, &at).with_context(|| format!("linking {}", at.display()))
    }

    fn write(&mut self, image_path: &str, text: &str) -> Result<()> {
        let p = self.path(image_path);
        self.parent_dirs(&p)?;
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        self.files.insert(image_path.into());
        Ok(())
    }
}

/// The libraries `ldd` lists for `elf` (absolute paths, the loader included, vdso not).
fn ldd(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .with_context(|| format!("running `ldd {}`", elf.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "`ldd {}` failed: {}",
            elf.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("`ldd {}`: {line}", elf.display());
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// OCI annotations as labels: title, description, version, licenses, source, revision,
/// created.
fn labels(root: &Path, version: &str) -> Vec<(&'static str, String)> {
    let mut l = vec![
        ("title", "interceptor".to_string()),
        (
            "description",
            "interceptor init (alias istio-iptables): istio-init's iptables ruleset, a drop-in init container".to_string(),
        ),
        ("version", version.to_string()),
        ("licenses", "Apache-2.0".to_string()),
        ("source", "https://example.invalid/interceptor".to_string()),
    ];
    if let Some(rev) = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    {
        l.push(("revision", rev));
    }
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        l.push(("created", rfc3339(now.as_secs())));
    }
    l
}

/// UTC seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Size of the staged tree as one gzip-compressed tar layer (what a registry would store).
fn gzipped_size(rootfs: &Path) -> Result<u64> {
    let out = Command::new("sh")
        .args(["-c", "tar -C \"$1\" -cf - . | gzip -6 | wc -c", "sh"])
        .arg(rootfs)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The containers.conf podman and buildah use: `$CONTAINERS_CONF` if set, else the repo's.
/// Made absolute: buildah reads it again from a subprocess in another directory.
pub fn containers_conf(root: &Path) -> PathBuf {
    match std::env::var_os("CONTAINERS_CONF").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p),
        None => root.join(CONTAINERS_CONF),
    }
}

fn buildah(root: &Path, args: &[&str]) -> Result<Output> {
    let mut c = Command::new("buildah");
    c.args(args).env("CONTAINERS_CONF", containers_conf(root));
    run(&mut c, &format!("buildah {}", args.join(" ")))
}

fn podman(root: &Path, args: &[&str]) -> Result<Output> {
    let mut c = Command::new("podman");
    c.args(args).env("CONTAINERS_CONF", containers_conf(root));
    run(&mut c, &format!("podman {}", args.join(" ")))
}

/// Runs `cmd`; on failure the error names `what` and carries its stderr.
fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
