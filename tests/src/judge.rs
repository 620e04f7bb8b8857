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

/// Runs ffprobe quietly with `args` on `path`; what it printed on stdout.
fn ffprobe(args: &[&str], path: &Path) -> Vec<u8> {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What ffprobe says of a file: codec names and the duration in seconds.
pub fn probe(path: &Path) -> (Vec<String>, f64) {
    let out = ffprobe(
        &[
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "json",
        ],
        path,
    );
    let v: Value = serde_json::from_slice(&out).expect("ffprobe json");
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

/// Decodes the whole file; ffmpeg's errors, if any, and a line for every audio packet that
/// begins before the one before it ends (ffmpeg notices such an overlap only sometimes).
pub fn decode_errors(path: &Path) -> String {
    let p = path.to_string_lossy();
    let (ok, mut err) = ffmpeg(&["-v", "error", "-i", &p, "-f", "null", "-"]);
    assert!(ok, "{err}");
    for (before, at) in audio_overlaps(path) {
        err.push_str(&format!(
            "audio packet at {at:.4} s begins before the one at {before:.4} s ends\n"
        ));
    }
    err
}

/// Each audio packet (its time, s) that begins before the one before it (its time) ends.
fn audio_overlaps(path: &Path) -> Vec<(f64, f64)> {
    let out = ffprobe(
        &[
            "-select_streams",
            "a",
            "-show_entries",
            "packet=pts_time,duration_time",
            "-of",
            "csv=p=0",
        ],
        path,
    );
    let packets: Vec<(f64, f64)> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim().parse::<f64>().ok());
            Some((f.next()??, f.next()??))
        })
        .collect();
    packets
        .windows(2)
        .filter(|w| w[1].0 + 0.0005 < w[0].0 + w[0].1)
        .map(|w| (w[0].0, w[1].0))
        .collect()
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
