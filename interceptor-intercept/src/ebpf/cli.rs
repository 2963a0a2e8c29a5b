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

use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::{cleanup, flags, load, logs, report, validate, Settings, Target};
use crate::config::Config;
use crate::init::{InitError, InitOptions};

/// `interceptor init --mode ebpf`, in the network namespace the caller has entered
/// (`--network-namespace`): refuses the flags it cannot honour, then removes
/// (`--cleanup-only`), validates only (`--skip-rule-apply`), or attaches (or updates) the
/// programs for `--cgroup` (default: this process's own) and validates when asked. With
/// `--debug`, follows the programs' logs until `stop` is set.
pub fn init(opts: &InitOptions, stop: &AtomicBool) -> Result<(), InitError> {
    flags::check(&opts.flags, &opts.compat, opts.debug).map_err(|e| InitError::Ebpf(e.into()))?;
    if opts.compat.cleanup_only {
        return remove(opts).map_err(InitError::Ebpf);
    }
    let cfg = crate::init::config(&opts.flags)?;
    let settings = Settings::from_config(&cfg).map_err(InitError::Ebpf)?;
    if opts.compat.skip_rule_apply {
        say!("ebpf: --skip-rule-apply: nothing attached or changed");
        if cfg.run_validation {
            let target = Target::resolve(opts.cgroup.as_deref(), opts.host_cgroup_root.as_deref())
                .map_err(InitError::Ebpf)?;
            run_validation(&target, &settings, &cfg)?;
        }
        return Ok(());
    }
    let target = Target::resolve(opts.cgroup.as_deref(), opts.host_cgroup_root.as_deref())
        .map_err(InitError::Ebpf)?;
    let mut loaded = load::init(&target, &settings, opts.debug).map_err(InitError::Ebpf)?;
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
    match loaded.skmsg {
        load::SkMsgChange::Attached => {
            say!("ebpf: socket fast path on: skmsg attached to sockhash SOCKETS")
        }
        load::SkMsgChange::NotAttached => say!(
            "ebpf: socket fast path off (--no-socket-fast-path): no socket is paired, skmsg is not attached"
        ),
        load::SkMsgChange::Detached => say!(
            "ebpf: socket fast path off (--no-socket-fast-path): no socket is paired from now on, skmsg taken off sockhash SOCKETS (connections paired before keep their pairing until they close)"
        ),
        load::SkMsgChange::Unknown => say!(
            "ebpf: socket fast path off (--no-socket-fast-path): no socket is paired from now on (this kernel cannot list the sockhash's sk_msg program, so an earlier init's may still be attached, with nothing to pass)"
        ),
    }
    // As istio-init: the interception stays when validation fails; the exit status says it.
    if cfg.run_validation {
        run_validation(&target, &settings, &cfg)?;
    }
    if opts.debug {
        logs::follow(&mut loaded.ebpf, stop).map_err(InitError::Ebpf)?;
    }
    Ok(())
}

fn run_validation(target: &Target, settings: &Settings, cfg: &Config) -> Result<(), InitError> {
    validate::run(target, settings, cfg.probe_port, cfg.probe_timeout)?;
    say!(
        "ebpf: validation passed: a connection from this process was redirected to 127.0.0.1:{} with its original destination",
        settings.proxy_port
    );
    Ok(())
}

/// `interceptor cleanup --mode ebpf`, in the network namespace the caller has entered:
/// detaches and unpins what `init` made for `--cgroup` there. The interception flags do
/// not matter (the pin directory alone names what to remove), but those `init` refuses
/// are refused here too, so one command line serves both.
pub fn cleanup(opts: &InitOptions) -> Result<(), InitError> {
    flags::check(&opts.flags, &opts.compat, false).map_err(|e| InitError::Ebpf(e.into()))?;
    if opts.debug {
        return Err(InitError::Ebpf(
            flags::Unsupported {
                flag: "--debug",
                value: "with cleanup".into(),
                reason: "nothing is loaded whose logs could be followed",
                env: None,
            }
            .into(),
        ));
    }
    remove(opts).map_err(InitError::Ebpf)
}

fn remove(opts: &InitOptions) -> Result<()> {
    let target = Target::resolve(opts.cgroup.as_deref(), opts.host_cgroup_root.as_deref())?;
    match cleanup::cleanup(&target)? {
        Some(dir) => say!("ebpf: detached and unpinned {}", dir.display()),
        None => say!(
            "ebpf: nothing pinned for cgroup {} in this network namespace",
            target.cgroup.display()
        ),
    }
    Ok(())
}

/// `interceptor status [--json]`.
pub fn status(json: bool) -> Result<()> {
    let r = report::report()?;
    if json {
        say!("{}", serde_json::to_string_pretty(&report::to_json(&r))?);
    } else {
        say!("{}", report::render(&r).trim_end());
    }
    Ok(())
}
