//! The eBPF mode's three commands (`init`, `cleanup`, `status`) and what they print; the
//! flags are `init`'s (istio-iptables' names), turned into [`Settings`] by
//! [`Settings::from_config`].

/// Prints a line; a closed stdout (`| head`) must not turn finished work into a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::{cleanup, load, logs, status, Settings, Target};

/// `interceptor init --mode ebpf`: attaches (or updates) the programs for `cgroup` (default:
/// this process's own) in the current network namespace; with `debug`, follows the
/// programs' logs until `stop` is set.
pub fn init(
    settings: &Settings,
    cgroup: Option<&Path>,
    debug: bool,
    stop: &AtomicBool,
) -> Result<()> {
    let target = Target::resolve(cgroup)?;
    let mut loaded = load::init(&target, settings, debug)?;
    say!(
        "ebpf: intercepting cgroup {} in netns cookie {}, pinned at {}",
        target.cgroup.display(),
        target.netns_cookie,
        loaded.pin_dir.display()
    );
    for (name, change) in &loaded.links {
        let what = match change {
            load::LinkChange::Created => "attached",
            load::LinkChange::Updated => "updated in place",
        };
        say!("ebpf: {name} {what}");
    }
    if debug {
        logs::follow(&mut loaded.ebpf, stop)?;
    }
    Ok(())
}

/// `interceptor cleanup --mode ebpf`: detaches and unpins what `init` made for `cgroup` in
/// the current network namespace.
pub fn cleanup(cgroup: Option<&Path>) -> Result<()> {
    let target = Target::resolve(cgroup)?;
    match cleanup::cleanup(&target)? {
        Some(dir) => say!("ebpf: detached and unpinned {}", dir.display()),
        None => say!(
            "ebpf: nothing pinned for cgroup {} in this network namespace",
            target.cgroup.display()
        ),
    }
    Ok(())
}

pub fn status() -> Result<()> {
    say!("{}", status::render(&status::instances()?).trim_end());
    Ok(())
}
