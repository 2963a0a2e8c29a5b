//! The binary as a CNI plugin: when the runtime runs `interceptor` with `CNI_COMMAND` set
//! (and no arguments), `main` comes here before any flag parsing. The work is
//! `interceptor_agent::plugin`'s; this side reads stdin, hands in `init`'s own flag parser
//! for the istio-iptables arguments, and writes the reply.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use interceptor_intercept::init::InitOptions;

use crate::init_args::{self, InitArgs};

/// Set by the runtime for every CNI request.
pub const CNI_COMMAND: &str = "CNI_COMMAND";

/// `init`'s flags alone, for parsing the arguments `interceptor_cni::pod::decide` built.
#[derive(Parser)]
#[command(name = "init")]
struct PluginInit {
    #[command(flatten)]
    init: InitArgs,
}

/// istio-iptables arguments to `init`'s options, exactly as `interceptor init ARGS` reads them.
pub fn parse_init_args(args: &[String]) -> Result<InitOptions, String> {
    let cmd = PluginInit::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(std::iter::once("init".to_string()).chain(args.iter().cloned()))
        .map_err(|e| e.to_string().trim().to_string())?;
    init_args::init_options(&cmd, &matches).map_err(|e| e.to_string().trim().to_string())
}

/// Whether the runtime is running us as a plugin.
pub fn requested() -> bool {
    std::env::var_os(CNI_COMMAND).is_some()
}

/// One plugin request: stdin in, the result (or the error JSON) out, exit 0 or 1.
pub fn run() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        // Without the conf there is nothing to decide; answer in the spec's error form.
        let err = interceptor_cni::CniError::new(
            interceptor_cni::spec::code::IO_FAILURE,
            "reading stdin failed",
            e.to_string(),
        );
        let _ = std::io::stdout().write_all(&interceptor_cni::spec::error_result(
            &err,
            interceptor_cni::spec::version::NEWEST,
        ));
        return ExitCode::from(1);
    }
    let env = |name: &str| std::env::var(name).ok();
    let reply = interceptor_agent::plugin::run(&env, &stdin, parse_init_args);
    let mut out = std::io::stdout();
    let _ = out.write_all(&reply.stdout);
    let _ = out.flush();
    ExitCode::from(reply.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decided_arguments_parse_with_inits_parser() {
        #[rustfmt::skip]
        let args: Vec<String> = [
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
            "-b", "*", "-d", "15090,15021,15020", "-g", "1337", "-q", "", "-o", "", "-k", "",
            "-c", "", "--redirect-dns=false", "--capture-all-dns=false", "--drop-invalid=false",
            "--dual-stack=false",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = parse_init_args(&args).unwrap();
        assert_eq!(o.flags.local_exclude_ports, "15090,15021,15020");
        assert!(!o.flags.redirect_dns);
        assert!(!o.flags.no_socket_fast_path);
        // What the plugin appends for an eBPF pod when the conflist has
        // `"socket_fast_path": false`.
        let mut off = args.clone();
        off.push("--no-socket-fast-path".into());
        assert!(parse_init_args(&off).unwrap().flags.no_socket_fast_path);
        let e = parse_init_args(&["-p".to_string()]).unwrap_err();
        assert!(e.contains("-p"), "{e}");
    }
}
