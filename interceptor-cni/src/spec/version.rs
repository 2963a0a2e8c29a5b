//! Which CNI spec versions the plugin speaks, and what each command requires.

use super::command::Command;
use super::error::SpecError;

/// The spec versions this plugin supports, oldest first. 0.3.0 is the first with
/// conflists and `prevResult`, which a chained plugin cannot do without.
pub(crate) const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: what VERSION reports when not asked about a version.
pub const NEWEST: &str = "1.1.0";

/// Whether `version` is one of [`SUPPORTED`]. An exact string match, as libcni's version
/// check does: "1.0" is not "1.0.0".
pub(crate) fn is_supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
}

/// Checks that the conf's version is supported and new enough for `command`: CHECK came
/// in 0.4.0, STATUS and GC in 1.1.0.
pub fn check(command: Command, version: &str) -> Result<(), SpecError> {
    if !is_supported(version) {
        return Err(SpecError::UnsupportedVersion {
            version: version.to_string(),
        });
    }
    let minimum = match command {
        Command::Check => "0.4.0",
        Command::Status | Command::Gc => "1.1.0",
        Command::Add | Command::Del | Command::Version => return Ok(()),
    };
    if at_least(version, minimum) {
        Ok(())
    } else {
        Err(SpecError::CommandTooNew {
            command: command.as_str(),
            version: version.to_string(),
            minimum,
        })
    }
}

/// `a >= b` for two supported versions (both in [`SUPPORTED`], so their index orders them).
fn at_least(a: &str, b: &str) -> bool {
    let pos = |v: &str| SUPPORTED.iter().position(|s| *s == v);
    matches!((pos(a), pos(b)), (Some(x), Some(y)) if x >= y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_versions() {
        for v in SUPPORTED {
            assert!(check(Command::Add, v).is_ok(), "{v}");
        }
        for v in ["0.1.0", "0.2.0", "1.0", "2.0.0", ""] {
            assert_eq!(
                check(Command::Add, v),
                Err(SpecError::UnsupportedVersion { version: v.into() })
            );
        }
        assert_eq!(SUPPORTED.last(), Some(&NEWEST));
    }

    #[test]
    fn commands_need_their_version() {
        assert!(check(Command::Check, "0.4.0").is_ok());
        assert_eq!(
            check(Command::Check, "0.3.1"),
            Err(SpecError::CommandTooNew {
                command: "CHECK",
                version: "0.3.1".into(),
                minimum: "0.4.0"
            })
        );
        assert!(check(Command::Status, "1.1.0").is_ok());
        assert!(check(Command::Status, "1.0.0").is_err());
        assert!(check(Command::Gc, "1.0.0").is_err());
        assert!(check(Command::Del, "0.3.0").is_ok());
    }
}
