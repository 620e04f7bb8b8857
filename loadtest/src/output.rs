//! What every mode shares on the way out: progress on stderr, and the JSON and SVG files.

use std::io::IsTerminal;
use std::path::Path;

/// A line of its own on stderr, when progress is wanted.
pub fn say(enabled: bool, msg: &str) {
    if enabled {
        eprintln!("relay-loadtest: {msg}");
    }
}

/// One line rewritten in place on a terminal; otherwise one line each time.
pub fn progress_line(enabled: bool, msg: &str) {
    if !enabled {
        return;
    }
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// Ends a run of [`progress_line`]s on a terminal.
pub fn end_progress(enabled: bool) {
    if enabled && std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Writes `text` to `path`, saying why not on stderr.
pub fn write(path: &Path, text: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("relay-loadtest: cannot write {}: {e}", path.display());
            false
        }
    }
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> bool {
    write(
        path,
        &serde_json::to_string_pretty(value).unwrap_or_default(),
    )
}
