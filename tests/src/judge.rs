//! Media files judged by Debian's ffmpeg and ffprobe.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs ffmpeg: (success, what it printed on stderr).
pub fn ffmpeg(args: &[&str]) -> (bool, String) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is missing: apt-get install -y ffmpeg");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// What ffprobe says of a file: codec names and the duration in seconds.
pub fn probe(path: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let codecs = v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["codec_name"].as_str().map(str::to_string))
        .collect();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codecs, duration)
}

/// Decodes the whole file; ffmpeg's errors, if any.
pub fn decode_errors(path: &Path) -> String {
    let p = path.to_string_lossy();
    let (ok, err) = ffmpeg(&["-v", "error", "-i", &p, "-f", "null", "-"]);
    assert!(ok, "{err}");
    err
}

/// The mean volume of a file's audio in dB (ffmpeg's volumedetect); -99 if it says none.
pub fn mean_volume(path: &Path) -> f64 {
    let (ok, err) = ffmpeg(&[
        "-i",
        &path.to_string_lossy(),
        "-af",
        "volumedetect",
        "-f",
        "null",
        "-",
    ]);
    assert!(ok, "{err}");
    err.split("mean_volume:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-99.0)
}
