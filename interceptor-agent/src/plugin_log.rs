//! The plugin's log: one line per request, to stderr (which the runtime may show) and
//! appended to the conf's `log_file` (which outlives the process, unlike stderr under
//! most runtimes). A log that cannot be written never fails a request.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::timefmt;

/// One request's line: time, container, pod, command, outcome.
pub fn line(container_id: &str, pod: &str, command: &str, outcome: &str) -> String {
    let id = if container_id.is_empty() {
        "-"
    } else {
        container_id
    };
    let pod = if pod.is_empty() { "-" } else { pod };
    // One line, whatever the details hold.
    let outcome = outcome.replace('\n', " | ");
    format!(
        "{} interceptor-cni container={id} pod={pod} command={command} outcome={outcome}\n",
        timefmt::now()
    )
}

/// Writes `line` to stderr and appends it to `log_file`.
pub fn write(log_file: Option<&Path>, line: &str) {
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = log_file {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            // O_APPEND and a single write: lines of concurrent runs do not interleave.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_event() {
        let l = line("abc", "ns/p", "ADD", "error 101: a\nb");
        assert!(
            l.ends_with("container=abc pod=ns/p command=ADD outcome=error 101: a | b\n"),
            "{l}"
        );
        assert_eq!(l.matches('\n').count(), 1);
        assert!(line("", "", "VERSION", "ok").contains("container=- pod=- "));
    }
}
