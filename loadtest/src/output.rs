//! What every mode shares on the way out: progress on stderr, and the JSON and SVG files.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

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

/// Where `--plot` goes: a bare file name lands next to the `--json` file, any other path
/// where it says.
pub fn plot_path(plot: &Path, json: Option<&Path>) -> PathBuf {
    let bare = plot.parent().is_none_or(|p| p.as_os_str().is_empty());
    match json.and_then(Path::parent) {
        Some(dir) if bare => dir.join(plot),
        _ => plot.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_plot_name_goes_next_to_the_json() {
        let json = Path::new("out/run.json");
        assert_eq!(
            plot_path(Path::new("run.svg"), Some(json)),
            Path::new("out/run.svg")
        );
        assert_eq!(
            plot_path(Path::new("p/run.svg"), Some(json)),
            Path::new("p/run.svg")
        );
        assert_eq!(plot_path(Path::new("run.svg"), None), Path::new("run.svg"));
        assert_eq!(
            plot_path(Path::new("run.svg"), Some(Path::new("run.json"))),
            Path::new("run.svg")
        );
    }
}
