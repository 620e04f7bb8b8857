//! A real browser for the end-to-end tests: Debian's headless Chromium driven through
//! chromedriver's WebDriver HTTP API on loopback.
//!
//! One [`Browser`] is one chromedriver process and one browser session; each [`Browser::open`]
//! is a separate window (its own page, its own `RTCPeerConnection`s). Chromium runs with a fake
//! camera and microphone, so `getUserMedia` needs no hardware and no prompt.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process with one browser session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// A window of the browser, addressed by its WebDriver handle.
#[derive(Debug, Clone)]
pub struct Window(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics with the install hint when the
    /// browser is missing: the browser tests are part of the suite, not optional.
    pub fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                PathBuf::from(bin).exists(),
                "{bin} is missing: apt-get install -y chromium chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while call("GET", &format!("{base}/status"), None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            // A screen share picks the whole (fake) screen without asking.
            "--auto-select-desktop-capture-source=Entire screen".into(),
            "--auto-accept-this-tab-capture".into(),
            "--allow-loopback-in-peer-connection".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            // Hidden windows must keep encoding, decoding and running timers at full rate.
            "--disable-background-timer-throttling".into(),
            "--disable-renderer-backgrounding".into(),
            "--disable-backgrounding-occluded-windows".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer = call("POST", &format!("{base}/session"), Some(&caps))
            .unwrap_or_else(|e| panic!("new browser session: {e}"));
        let session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_string();
        let b = Browser {
            driver,
            base,
            session,
            _profile: profile,
        };
        b.cmd("POST", "/timeouts", json!({"script": 60_000}));
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let body = (method != "GET").then_some(&body);
        call(method, &url, body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Opens `url` in a new window (the first call uses the window the session started with).
    pub fn open(&self, url: &str) -> Window {
        let handle = if self.used() {
            let w = self.cmd("POST", "/window/new", json!({"type": "window"}));
            w["handle"].as_str().unwrap_or_default().to_string()
        } else {
            let w = self.cmd("GET", "/window", Value::Null);
            w.as_str().unwrap_or_default().to_string()
        };
        assert!(!handle.is_empty(), "no window handle");
        let w = Window(handle);
        self.switch(&w);
        self.cmd("POST", "/url", json!({"url": url}));
        w
    }

    /// Closes the window `w` (its page and every connection it holds); the browser goes on in
    /// another window, which must exist.
    pub fn close(&self, w: &Window) {
        self.switch(w);
        let left = self.cmd("DELETE", "/window", Value::Null);
        let other = left
            .as_array()
            .and_then(|h| h.first())
            .and_then(Value::as_str)
            .expect("a window is left open");
        self.cmd("POST", "/window", json!({"handle": other}));
    }

    /// The element of `w` that `xpath` finds; panics if none.
    fn element(&self, w: &Window, xpath: &str) -> String {
        self.switch(w);
        let e = self.cmd(
            "POST",
            "/element",
            json!({"using": "xpath", "value": xpath}),
        );
        e.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {xpath}"))
            .to_string()
    }

    /// Clicks the button of `w` whose accessible name is `name` (its text or `aria-label`),
    /// as a person would.
    pub fn click(&self, w: &Window, name: &str) {
        let xpath = format!(
            "//button[(normalize-space(.)='{name}' or @aria-label='{name}') and not(ancestor-or-self::*[@hidden])]"
        );
        let id = self.element(w, &xpath);
        self.cmd("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Types `text` into the field of `w` labelled `label` (`aria-label`).
    pub fn type_into(&self, w: &Window, label: &str, text: &str) {
        let id = self.element(w, &format!("//input[@aria-label='{label}']"));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        );
    }

    /// A PNG of what `w` shows.
    pub fn screenshot(&self, w: &Window) -> Vec<u8> {
        use base64::Engine;
        self.switch(w);
        let v = self.cmd("GET", "/screenshot", Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot is base64")
    }

    /// Sets the size of `w`'s window.
    pub fn resize(&self, w: &Window, width: u32, height: u32) {
        self.switch(w);
        self.cmd(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        );
    }

    /// Whether the current window already shows a page of ours.
    fn used(&self) -> bool {
        let url = self.cmd("GET", "/url", Value::Null);
        url.as_str().is_some_and(|u| u.starts_with("http"))
    }

    fn switch(&self, w: &Window) {
        self.cmd("POST", "/window", json!({"handle": w.0}));
    }

    /// Runs `body` as an async function in `w` and returns its result. `body` may `await`;
    /// a thrown error fails the test with its message.
    pub fn run(&self, w: &Window, body: &str) -> Value {
        self.try_run(w, body)
            .unwrap_or_else(|e| panic!("{e}\nscript: {body}"))
    }

    /// [`Browser::run`] for a page that may be moving to another address: a script cut off by
    /// the page going away is an error, not a failed test.
    pub fn try_run(&self, w: &Window, body: &str) -> Result<Value, String> {
        self.switch(w);
        let script = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {body} }})().then(
                 (v) => done({{ ok: v === undefined ? null : v }}),
                 (e) => done({{ err: String(e && e.message || e) }}));"
        );
        let url = format!("{}/session/{}/execute/async", self.base, self.session);
        let v = call("POST", &url, Some(&json!({"script": script, "args": []})))
            .map_err(|e| format!("WebDriver POST /execute/async: {e}"))?;
        if let Some(err) = v.get("err") {
            return Err(format!("script failed in the page: {err}"));
        }
        Ok(v["ok"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = call("DELETE", &url, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver request; the answer's `value`, or the WebDriver error as text.
fn call(method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let resp = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, b) => agent
            .post(url)
            .content_type("application/json")
            .send(b.unwrap_or(&json!({})).to_string()),
    };
    let mut resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if status != 200 {
        return Err(format!("{status}: {}", v["value"]));
    }
    Ok(v["value"].clone())
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How long a layout may take to show in the decoded frames: a keyframe request, the
/// publisher's answer and the bandwidth estimate's ramp on a busy two-core machine.
pub const SETTLE: Duration = Duration::from_secs(40);

/// One video slot of the watching page, as `getStats()` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    pub mid: u32,
    pub frames: u64,
    pub height: u64,
    pub freezes: u64,
}

pub fn slots(b: &Browser, w: &Window) -> Vec<Slot> {
    let v = b.run(w, "return await relay.stats('sub');");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| Slot {
            mid: s["mid"].as_str().and_then(|m| m.parse().ok()).unwrap_or(0),
            frames: s["framesDecoded"].as_u64().unwrap_or(0),
            height: s["frameHeight"].as_u64().unwrap_or(0),
            freezes: s["freezeCount"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// The heights of the layers a publishing page encodes, lowest first, once all `n` run.
pub fn layer_heights(b: &Browser, w: &Window, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = b.run(w, "return await relay.stats('pub');");
        let heights: Vec<u64> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["framesEncoded"].as_u64().unwrap_or(0) > 0)
            .filter_map(|s| s["frameHeight"].as_u64())
            .collect();
        if heights.len() == n {
            return heights;
        }
        assert!(
            Instant::now() < deadline,
            "the publisher encodes {heights:?}, not {n} layers"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `want` holds for the watching page's slots and every slot it names as live
/// (`want` returns their mids) decoded new frames since the previous look. Returns the slots.
pub fn wait_for(
    b: &Browser,
    w: &Window,
    what: &str,
    want: impl Fn(&[Slot]) -> Option<Vec<u32>>,
) -> Vec<Slot> {
    let deadline = Instant::now() + SETTLE;
    let mut prev = slots(b, w);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = slots(b, w);
        if let Some(live) = want(&now) {
            let decoding = live.iter().all(|mid| {
                let frames = |v: &[Slot]| v.iter().find(|s| s.mid == *mid).map(|s| s.frames);
                frames(&now) > frames(&prev)
            });
            if decoding {
                return now;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {SETTLE:?}; slots now {now:?}"
        );
        prev = now;
    }
}

pub fn slot(v: &[Slot], mid: u32) -> Slot {
    *v.iter()
        .find(|s| s.mid == mid)
        .unwrap_or_else(|| panic!("no slot {mid} in {v:?}"))
}
