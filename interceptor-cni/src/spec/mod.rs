//! The CNI protocol, spec versions 0.3.0 to 1.1.0, as a chained plugin speaks it.

pub mod args;
pub mod command;
pub mod error;
pub mod invocation;
pub mod netconf;
pub mod output;
pub mod version;

pub use args::CniArgs;
pub use command::Command;
pub use error::{code, CniError, SpecError};
pub use invocation::{Input, Invocation};
pub use netconf::{Mechanism, NetConf, PluginConf, RuntimeConfig};
pub use output::{add_result, error_result, error_version, version_result};
