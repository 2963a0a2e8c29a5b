//! The chained CNI plugin: one run per runtime request, `CNI_*` variables and the network
//! configuration in, a result or an error out.
//!
//! | command | what it does |
//! |---------|--------------|
//! | VERSION | the supported spec versions |
//! | ADD     | decides (`interceptor_cni::pod::decide`); for a meshed pod sets interception up in `CNI_NETNS` (iptables rules, or the eBPF node programs' entries), records the pod, then passes `prevResult` through. Fails closed: a pod that should be meshed and cannot be gets an error (code 101) and nothing half-applied |
//! | DEL     | takes down what ADD set up (rules in the namespace if it still exists, eBPF entries and link), removes the record; succeeds for pods it never saw and without a namespace |
//! | CHECK   | compares the namespace with the record (rules or map entries); an error names what is missing |
//! | STATUS  | eBPF mode: are the agent's programs attached? (code 50 if not) |
//! | GC      | nothing to collect (the agent drops records of namespaces that are gone) |
//!
//! The result alone goes to stdout; each request is logged to stderr and the conf's
//! `log_file`, and appended to the CNI request log the agent counts (`requests`).

use std::path::{Path, PathBuf};

use interceptor_cni::spec::{self, code, CniError, Command, Input, Invocation, NetConf};
use interceptor_cni::{decide, Decision, PodInfo};

use crate::intercept::{self, Applied, ArgsParser, Mode};
use crate::record::{self, PodRecord, Records};
use crate::{netns, plugin_log, requests, timefmt};

/// What the binary writes and exits with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub stdout: Vec<u8>,
    pub exit_code: u8,
}

/// How a request ended, for the log and the request counts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Succeeded; the text says what was done.
    Ok(String),
    /// ADD of a pod that is not meshed.
    Skipped(String),
}

/// Runs one request: `env` looks up the environment, `stdin` is what the runtime wrote.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], parse: ArgsParser) -> Reply {
    let inv = Invocation::parse(env, stdin);
    // What the log and the request count need, from whatever could be read.
    let conf = match &inv {
        Ok(i) => i.conf().cloned(),
        Err(_) => NetConf::parse(stdin).ok(),
    };
    let command = match &inv {
        Ok(i) => i.command.as_str().to_string(),
        Err(_) => env("CNI_COMMAND").unwrap_or_default(),
    };
    let container_id = env("CNI_CONTAINERID").unwrap_or_default();
    let pod = match &inv {
        Ok(i) => match (i.args.pod_namespace(), i.args.pod_name()) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.to_string(),
            _ => String::new(),
        },
        Err(_) => String::new(),
    };

    let result = match inv {
        Ok(inv) => dispatch(&inv, parse),
        Err(e) => Err(CniError::from(&e)),
    };
    let (reply, outcome_text, result_label, code) = match result {
        Ok((stdout, outcome)) => {
            let (text, label) = match outcome {
                Outcome::Ok(t) => (format!("ok: {t}"), "ok"),
                Outcome::Skipped(t) => (format!("skipped: {t}"), "skipped"),
            };
            (
                Reply {
                    stdout,
                    exit_code: 0,
                },
                text,
                label,
                None,
            )
        }
        Err(e) => (
            Reply {
                stdout: spec::error_result(&e, &spec::error_version(stdin)),
                exit_code: 1,
            },
            format!("error {}: {e}", e.code),
            "error",
            Some(e.code),
        ),
    };

    let (log_file, state_dir) = match &conf {
        Some(c) => (c.plugin.log_file.clone(), c.plugin.state_dir.clone()),
        None => (None, PathBuf::from(spec::netconf::DEFAULT_STATE_DIR)),
    };
    plugin_log::write(
        log_file.as_deref(),
        &plugin_log::line(&container_id, &pod, &command, &outcome_text),
    );
    // VERSION carries no conf, so no state dir of its own: counted only when the
    // default one exists (an agent made it).
    if conf.is_some() || state_dir.is_dir() {
        let req = requests::Request {
            time: timefmt::now(),
            container_id,
            pod,
            command,
            result: result_label.to_string(),
            code,
        };
        if let Err(e) = requests::append(&state_dir, &req) {
            plugin_log::write(
                log_file.as_deref(),
                &plugin_log::line(
                    &req.container_id,
                    &req.pod,
                    &req.command,
                    &format!(
                        "(not counted: cannot append to {}: {e})",
                        state_dir.join(requests::LOG_FILE).display()
                    ),
                ),
            );
        }
    }
    reply
}

fn dispatch(inv: &Invocation, parse: ArgsParser) -> Result<(Vec<u8>, Outcome), CniError> {
    let conf = match &inv.input {
        Input::Version { requested } => {
            let out = spec::version_result(requested.as_deref()).map_err(|e| CniError::from(&e))?;
            return Ok((out, Outcome::Ok("versions reported".into())));
        }
        Input::Conf(c) => c.as_ref(),
    };
    match inv.command {
        Command::Add => add(inv, conf, parse),
        Command::Del => del(inv, conf, parse).map(|o| (Vec::new(), o)),
        Command::Check => check(inv, conf, parse).map(|o| (Vec::new(), o)),
        Command::Status => status(conf).map(|o| (Vec::new(), o)),
        Command::Gc => Ok((Vec::new(), Outcome::Ok("nothing to collect".into()))),
        Command::Version => Ok((Vec::new(), Outcome::Ok(String::new()))),
    }
}

fn failed(details: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::INTERCEPTION_FAILED,
        "interception could not be set up",
        details.to_string(),
    )
}

fn state_error(details: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::STATE_FAILURE,
        "the plugin's state directory failed",
        details.to_string(),
    )
}

fn add(
    inv: &Invocation,
    conf: &NetConf,
    parse: ArgsParser,
) -> Result<(Vec<u8>, Outcome), CniError> {
    // The result first: an ADD that cannot answer must not change anything.
    let result = spec::add_result(conf).map_err(|e| CniError::from(&e))?;
    let pod = PodInfo::from_invocation(&inv.args, conf);
    let interception = match decide(&pod, &conf.plugin).map_err(CniError::from)? {
        Decision::Skip(reason) => return Ok((result, Outcome::Skipped(reason))),
        Decision::Mesh(i) => i,
    };
    let netns = inv
        .netns
        .as_deref()
        .ok_or_else(|| failed("CNI_NETNS is empty"))?;
    let records = Records::new(&conf.plugin.state_dir);
    let _lock = records.lock().map_err(state_error)?;
    let opts = intercept::options(parse, interception.mode, &interception.args).map_err(failed)?;
    let applied = intercept::apply(interception.mode, netns, &opts).map_err(failed)?;
    let ips = record::prev_result_ips(conf.prev_result.as_ref());
    let rec = PodRecord {
        version: record::VERSION,
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        // A meshed pod has an address from the interface plugin; the unspecified
        // address stands in so the record stays readable if it had none.
        ip: ips
            .first()
            .copied()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        ips,
        netns: netns.display().to_string(),
        netns_cookie: applied.netns_cookie,
        mode: interception.mode.as_str().to_string(),
        args: interception.args.clone(),
        iptables_rules: applied.iptables_rules.clone(),
        added_at: timefmt::now(),
    };
    if let Err(e) = records.write(&rec) {
        // Without a record nobody could find this again: take it back.
        let _ = intercept::remove(
            interception.mode,
            Some(netns),
            Some(&opts),
            Some(applied.netns_cookie),
        );
        return Err(state_error(e));
    }
    Ok((
        result,
        Outcome::Ok(format!(
            "meshed ({}) with {}",
            interception.mode.as_str(),
            interception.args.join(" ")
        )),
    ))
}

fn del(inv: &Invocation, conf: &NetConf, parse: ArgsParser) -> Result<Outcome, CniError> {
    let records = Records::new(&conf.plugin.state_dir);
    let _lock = records.lock().map_err(state_error)?;
    let rec = records.load(&inv.container_id).map_err(state_error)?;
    let given = inv.netns.as_deref().and_then(netns::resolve);
    let Some(rec) = rec else {
        // Never recorded (not meshed, or the record is lost): in eBPF mode, entries may
        // still exist for a namespace we can name.
        if conf.plugin.mode == Mode::Ebpf {
            if let Some(ns) = &given {
                intercept::remove(Mode::Ebpf, Some(ns), None, None).map_err(failed)?;
            }
        }
        return Ok(Outcome::Ok("nothing recorded for this container".into()));
    };
    let mode = Mode::parse(&rec.mode)
        .map_err(|e| state_error(format!("record of {}: {e}", rec.container_id)))?;
    let netns = given.or_else(|| netns::resolve(Path::new(&rec.netns)));
    let opts = intercept::options(parse, mode, &rec.args).ok();
    let removed = intercept::remove(
        mode,
        netns.as_deref(),
        opts.as_ref(),
        Some(rec.netns_cookie),
    );
    if let Err(e) = removed {
        if mode == Mode::Ebpf {
            // Node-wide state: keep the record so a retried DEL (or the agent) finds it.
            return Err(failed(e));
        }
        // The rules live in the namespace, which is going away with them.
        plugin_log::write(
            conf.plugin.log_file.as_deref(),
            &plugin_log::line(&inv.container_id, "", "DEL", &format!("warning: {e}")),
        );
    }
    records.remove(&inv.container_id).map_err(state_error)?;
    Ok(Outcome::Ok(format!(
        "removed {}/{} ({})",
        rec.namespace, rec.name, rec.mode
    )))
}

fn check(inv: &Invocation, conf: &NetConf, parse: ArgsParser) -> Result<Outcome, CniError> {
    let pod = PodInfo::from_invocation(&inv.args, conf);
    if let Decision::Skip(reason) = decide(&pod, &conf.plugin).map_err(CniError::from)? {
        return Ok(Outcome::Ok(format!("not meshed: {reason}")));
    }
    let records = Records::new(&conf.plugin.state_dir);
    let _lock = records.lock().map_err(state_error)?;
    let rec = records
        .load(&inv.container_id)
        .map_err(state_error)?
        .ok_or_else(|| {
            failed(format!(
                "no record of container {}: ADD did not set it up",
                inv.container_id
            ))
        })?;
    let mode = Mode::parse(&rec.mode)
        .map_err(|e| state_error(format!("record of {}: {e}", rec.container_id)))?;
    let netns = inv
        .netns
        .as_deref()
        .ok_or_else(|| failed("CNI_NETNS is empty"))?;
    let opts = intercept::options(parse, mode, &rec.args).map_err(failed)?;
    let recorded = Applied {
        netns_cookie: rec.netns_cookie,
        iptables_rules: rec.iptables_rules.clone(),
    };
    let problems = intercept::check(mode, netns, &opts, &recorded).map_err(failed)?;
    if !problems.is_empty() {
        return Err(CniError::new(
            code::INTERCEPTION_FAILED,
            "interception is not in place",
            intercept::summary(&problems),
        ));
    }
    Ok(Outcome::Ok(format!("in place ({})", rec.mode)))
}

fn status(conf: &NetConf) -> Result<Outcome, CniError> {
    match conf.plugin.mode {
        Mode::Ebpf => interceptor_intercept::ebpf::node::check_attached()
            .map(|()| Outcome::Ok("the agent's eBPF programs are attached".into()))
            .map_err(|e| {
                CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    "plugin not available",
                    e.to_string(),
                )
            }),
        Mode::Iptables => {
            interceptor_intercept::iptables::detect(interceptor_intercept::rules::Family::V4, None)
                .map(|_| Outcome::Ok("iptables is installed".into()))
                .map_err(|e| {
                    CniError::new(
                        code::PLUGIN_NOT_AVAILABLE,
                        "plugin not available",
                        e.to_string(),
                    )
                })
        }
    }
}
