//! Harness for the end-to-end tests in `tests/tests/`: starts the real `relay` binary on
//! loopback with a throwaway data directory, and talks to it over real sockets.
//!
//! Every relay started here binds 127.0.0.1 with port 0 and is stopped (SIGTERM, then SIGKILL)
//! when its handle drops, so tests can run in parallel and leave nothing behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

pub mod browser;
pub mod judge;

pub use relay_kit::noise;
use relay_kit::process::RelayProcess;

pub use relay_kit::process::relay_bin;

/// Runs the relay binary with `args` and waits for it.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(relay_bin());
    cmd.args(args)
        .env_remove("RELAY_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run relay")
}

/// A running appliance.
#[derive(Debug)]
pub struct Relay {
    process: RelayProcess,
    pub http: SocketAddr,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// What a relay answered over HTTP.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The contract's error code of an error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Relay {
    /// Starts a relay on a fresh data directory.
    pub fn start() -> Relay {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        let mut r = Relay::start_in(&data, "", &[]);
        r._tmp = Some(tmp);
        r
    }

    /// Starts a relay on `data` with extra TOML configuration and environment.
    pub fn start_in(data: &Path, extra_config: &str, env: &[(&str, &str)]) -> Relay {
        Relay::try_start_in(data, extra_config, env)
            .unwrap_or_else(|log| panic!("relay did not start:\n{log}"))
    }

    /// Like [`Relay::start_in`], returning the relay's output if it exits or does not come up.
    pub fn try_start_in(
        data: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<Relay, String> {
        std::fs::create_dir_all(data.parent().unwrap_or(data)).expect("create parent of data dir");
        let config = data.with_extension("toml");
        let mut text =
            format!("[http]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"3s\"\n{extra_config}");
        // Parallel relays must not fight over the default media and file ports.
        if !extra_config.contains("[media]") {
            text.push_str("\n[media]\nfirst_port = 0\nworkers = 2\n");
        }
        if !extra_config.contains("[files]") {
            text.push_str("\n[files]\nlisten = \"127.0.0.1:0\"\n");
        }
        std::fs::write(&config, text).expect("write config");
        let process =
            RelayProcess::start(&relay_bin(), &config, data, env, Duration::from_secs(60))?;
        Ok(Relay {
            http: process.http,
            process,
            data: data.into(),
            _tmp: None,
        })
    }

    /// Everything the relay has logged so far.
    pub fn log(&self) -> String {
        self.process.daemon.log()
    }

    /// The value of `key=` on the relay's start-up line.
    pub fn startup_field(&self, key: &str) -> Option<String> {
        self.process.startup_field(key)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn agent() -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build();
        ureq::Agent::new_with_config(config)
    }

    fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut resp = result.expect("HTTP request to the relay");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Answer {
            status,
            body,
            headers,
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = Relay::agent().get(self.url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        Relay::answer(req.call())
    }

    pub fn post(&self, path: &str, token: Option<&str>, content_type: &str, body: &str) -> Answer {
        let mut req = Relay::agent()
            .post(self.url(path))
            .content_type(content_type);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        Relay::answer(req.send(body.to_string()))
    }

    /// Any request: `method` GET, POST, PATCH or DELETE, with a body of `content_type` for the
    /// two that carry one.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> Answer {
        let agent = Relay::agent();
        let url = self.url(path);
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    agent.get(&url)
                } else {
                    agent.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = if method == "PATCH" {
                    agent.patch(&url)
                } else {
                    agent.post(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.content_type(content_type).send(body.to_string())
            }
        };
        Relay::answer(result)
    }

    /// A metric's value from `/metrics`, by its full name with labels as exposed.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics", None).body;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l[series.len()..].trim().parse().ok())
    }

    /// Runs a relay command against this relay's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let data = self.data.to_string_lossy().to_string();
        all.extend(["--data", &data]);
        run(&all, &[])
    }

    /// Registers user `name` in `org` on the data directory; panics if refused.
    pub fn add_user(&self, org: &str, name: &str, clearance: u8) {
        let c = clearance.to_string();
        let out = self.cli(&[
            "admin",
            "user",
            "add",
            "--org",
            org,
            name,
            "--clearance",
            &c,
        ]);
        assert!(
            out.status.success(),
            "relay admin user add {name}: {}",
            stderr(&out)
        );
    }

    /// Registers user `name` in `demo` (clearance 1) and mints a token for them on the demo
    /// device that may publish and subscribe.
    pub fn participant(&self, name: &str) -> String {
        self.add_user("demo", name, 1);
        self.token(&[
            "--org",
            "demo",
            "--user",
            name,
            "--device",
            "demo-browser",
            "--grants",
            "publish,subscribe",
        ])
    }

    /// Mints a token on the data directory; panics if refused.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "relay token {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 token")
            .trim()
            .to_string()
    }

    /// A token for the demo user on the demo device.
    pub fn demo_token(&self, grants: &str) -> String {
        self.token(&[
            "--org",
            "demo",
            "--user",
            "demo",
            "--device",
            "demo-browser",
            "--grants",
            grants,
        ])
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        match self.process.daemon.stop_within(Duration::from_secs(15)) {
            Some(status) => status,
            None => panic!("relay did not stop within 15 s of SIGTERM:\n{}", self.log()),
        }
    }

    /// Kills the relay at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        self.process.daemon.kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.daemon.pid().unwrap_or(0)
    }

    /// The file plane's QUIC address, from the start-up line.
    pub fn files_addr(&self) -> String {
        self.startup_field("files")
            .expect("files= in the start-up line")
    }

    /// The arguments that point `relay files ...` at this relay with `token`, asking for JSON.
    pub fn files_args(&self, token: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec!["files".to_string()];
        all.extend(args.iter().map(ToString::to_string));
        all.extend([
            "--server".into(),
            self.files_addr(),
            "--data".into(),
            self.data.to_string_lossy().into_owned(),
            "--token".into(),
            token.into(),
            "--json".into(),
        ]);
        all
    }

    /// The file client's state directory (its remembered scans) beside the data directory, so
    /// that tests neither read nor leave anything in the home directory.
    pub fn client_state(&self) -> PathBuf {
        self.data.with_extension("client-state")
    }

    /// Runs `relay files ...` against this relay and waits for it.
    pub fn files(&self, token: &str, args: &[&str]) -> FilesRun {
        let all = self.files_args(token, args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let state = self.client_state();
        FilesRun::from(run(&refs, &[("RELAY_STATE_DIR", &state.to_string_lossy())]))
    }

    /// Starts `relay files ...` against this relay without waiting, so a test can kill it.
    pub fn spawn_files(&self, token: &str, args: &[&str]) -> Child {
        Command::new(relay_bin())
            .args(self.files_args(token, args))
            .env_remove("RELAY_TOKEN")
            .env("RELAY_STATE_DIR", self.client_state())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay files")
    }
}

/// The outcome of a `relay files ... --json` command.
#[derive(Debug)]
pub struct FilesRun {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl From<Output> for FilesRun {
    fn from(out: Output) -> Self {
        let text = String::from_utf8_lossy(&out.stdout);
        FilesRun {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null),
            stderr: stderr(&out),
        }
    }
}

impl FilesRun {
    /// A number field of the JSON answer.
    pub fn n(&self, key: &str) -> u64 {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {} ({})", self.json, self.stderr))
    }

    pub fn s(&self, key: &str) -> String {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {} ({})", self.json, self.stderr))
            .to_string()
    }
}

/// Standard error of a command, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
