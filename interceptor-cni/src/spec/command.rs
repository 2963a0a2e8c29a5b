//! `CNI_COMMAND`: what the runtime asks the plugin to do.

use super::error::SpecError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set up interception for a new pod sandbox.
    Add,
    /// Undo it (best effort: must succeed when there is nothing left to undo).
    Del,
    /// Confirm it is still in place (0.4.0+).
    Check,
    /// Report supported spec versions.
    Version,
    /// Is the plugin able to service ADD (1.1.0+)?
    Status,
    /// Remove stale resources (1.1.0+); this plugin keeps none, so it is a no-op success.
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`; the spec's names are upper case and matched exactly.
    pub fn parse(value: &str) -> Result<Command, SpecError> {
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => {
                return Err(SpecError::UnknownCommand {
                    value: value.to_string(),
                })
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The environment variables the spec requires for this command, besides
    /// `CNI_COMMAND` itself. DEL may come without `CNI_NETNS` (the namespace may be gone);
    /// VERSION and STATUS need nothing else; GC needs `CNI_PATH` to reach delegates.
    pub(crate) fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Version | Command::Status => &[],
        }
    }

    /// Whether the command acts on one attachment (container id + interface).
    pub(crate) fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_rejects_others() {
        for c in [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Version,
            Command::Status,
            Command::Gc,
        ] {
            assert_eq!(Command::parse(c.as_str()), Ok(c));
        }
        for bad in ["add", "", "DELETE", " ADD"] {
            assert_eq!(
                Command::parse(bad),
                Err(SpecError::UnknownCommand { value: bad.into() })
            );
        }
    }
}
