//! The command line: `relay serve | token | admin | files | store ...`.
//!
//! `token` and `admin` work either on the data directory directly (`--data DIR`) or through a
//! running appliance's HTTP API (`--server URL --token T`, limited to that token's organisation).
//! Both paths go through the same [`Control`] checks and are audited alike.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 3 denied.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;
use crate::control::audit::{self, AuditLog};
use crate::control::registry::{DeviceKind, Registry, RegistryError};
use crate::control::token::Grant;
use crate::control::{Control, ControlError, MintRequest, parse_kind};
use crate::datadir::DataDir;
use crate::metrics::Metrics;

#[derive(Debug, Parser)]
#[command(name = "relay", version, about = "Media and file relay appliance")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance.
    Serve {
        /// TOML configuration file; without it, the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// State directory (overrides `data_dir` of the configuration).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Mint a token; prints the token alone on stdout.
    Token(TokenArgs),
    /// Move files through the file plane (QUIC).
    Files {
        #[command(subcommand)]
        command: crate::files::cli::FilesCommand,
    },
    /// Check the file plane's chunk store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Change or check the registry and the audit log.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        #[command(flatten)]
        target: Target,
    },
}

/// Where `token` and `admin` act: the data directory, or a running appliance.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Work on this data directory directly.
    #[arg(long, global = true, conflicts_with = "server")]
    pub data: Option<PathBuf>,
    /// Work through this appliance's HTTP API (for example http://127.0.0.1:8080).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Admin token for --server.
    #[arg(long, global = true, env = "RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub org: String,
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub device: String,
    /// 0..3; defaults to the highest the registry allows for this user and device.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub clearance: Option<u8>,
    /// Limit the token to one room.
    #[arg(long)]
    pub room: Option<String>,
    /// Comma-separated: publish, subscribe, files, record, admin.
    #[arg(long, default_value = "publish,subscribe,files", value_delimiter = ',', value_parser = parse_grant)]
    pub grants: Vec<Grant>,
    /// Lifetime, for example 15m, 1h, 2days; defaults to tokens.default_ttl.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Register an organisation.
    Add {
        name: String,
        /// Storage quota in logical bytes.
        #[arg(long)]
        quota_bytes: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register a user.
    Add {
        #[arg(long)]
        org: String,
        name: String,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
        clearance: u8,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device.
    Add {
        #[arg(long)]
        org: String,
        id: String,
        #[arg(long, default_value = "browser", value_parser = parse_kind)]
        kind: DeviceKind,
        /// The highest clearance this device may carry.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
        max_clearance: u8,
    },
    /// Revoke a device; its tokens stop working at their next request.
    Revoke {
        #[arg(long)]
        org: String,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoomCommand {
    /// Register a room.
    Add {
        #[arg(long)]
        org: String,
        name: String,
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
        classification: u8,
        /// Material may be viewed but never recorded.
        #[arg(long)]
        secure_view: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-hash every stored chunk against its name and recount the references of every file;
    /// exits 1 when anything is wrong. Safe beside a running relay.
    Check {
        /// The data directory (default: the configuration's).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain; names the first broken line.
    Verify,
}

fn parse_grant(s: &str) -> Result<Grant, String> {
    Grant::parse(s.trim())
        .ok_or_else(|| format!("unknown grant {s:?} (publish, subscribe, files, record, admin)"))
}

/// A failed command and its exit code.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Denied(String),
    Failure(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Failure(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Denied(_) => 3,
        })
    }

    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Denied(m) | CliError::Failure(m) => m,
        }
    }
}

impl From<RegistryError> for CliError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(_) | RegistryError::NotFound(_) => {
                CliError::Usage(e.to_string())
            }
            _ => CliError::Failure(e.to_string()),
        }
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Denied(d) => CliError::Denied(format!("denied ({}): {d}", d.code())),
            ControlError::Registry(r) => r.into(),
        }
    }
}

type CliResult = Result<(), CliError>;

/// Runs `token`, `admin` and `files` commands. (`serve` is run by the binary, which owns the runtime.)
pub fn run_offline(command: Command) -> CliResult {
    match command {
        Command::Serve { .. } => Err(CliError::Usage("serve is not an offline command".into())),
        Command::Token(args) => token(args),
        Command::Admin { command, target } => admin(command, &target),
        Command::Files { command } => crate::files::cli::run(command),
        Command::Store {
            command: StoreCommand::Check { data, json },
        } => store_check(data, json),
    }
}

fn store_check(data: Option<PathBuf>, json: bool) -> CliResult {
    use crate::files::store::ChunkStore;
    let dir = data.unwrap_or_else(|| Config::default().data_dir);
    if !dir.join("files.db").exists() {
        return Err(CliError::Usage(format!(
            "{} holds no file store (files.db)",
            dir.display()
        )));
    }
    let store = ChunkStore::open(&dir).map_err(|e| CliError::Failure(e.to_string()))?;
    let r = store
        .check()
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let hexes = |v: &[[u8; 32]]| v.iter().map(hex::encode).collect::<Vec<_>>();
    if json {
        let org: Vec<Value> = r
            .org_miscounted
            .iter()
            .map(|(o, h)| json!({ "org": o, "chunk": hex::encode(h) }))
            .collect();
        println!(
            "{}",
            json!({
                "checked": r.checked,
                "clean": r.is_clean(),
                "corrupt": hexes(&r.corrupt),
                "missing": hexes(&r.missing),
                "miscounted": hexes(&r.miscounted),
                "org_miscounted": org,
            })
        );
    } else {
        println!("checked {} chunks", r.checked);
        for (what, list) in [
            ("corrupt (bytes do not match the name)", &r.corrupt),
            ("missing", &r.missing),
            ("reference count differs from the files", &r.miscounted),
        ] {
            for h in list {
                println!("{what}: {}", hex::encode(h));
            }
        }
        for (org, h) in &r.org_miscounted {
            println!(
                "organisation {org}: reference count differs from its files: {}",
                hex::encode(h)
            );
        }
    }
    if r.is_clean() {
        if !json {
            println!("store intact");
        }
        Ok(())
    } else {
        Err(CliError::Failure("the store check found problems".into()))
    }
}

fn token(args: TokenArgs) -> CliResult {
    let req = MintRequest {
        org: args.org,
        user: args.user,
        device: args.device,
        clearance: args.clearance,
        room: args.room,
        grants: Some(args.grants),
        ttl: args.ttl,
    };
    let token = match Remote::of(&args.target)? {
        Some(remote) => {
            let body = json!({
                "org": req.org, "user": req.user, "device": req.device, "clearance": req.clearance,
                "room": req.room, "grants": req.grants,
                "ttl": req.ttl.map(|t| humantime::format_duration(t).to_string()),
            });
            let v = remote.call("POST", "/api/admin/tokens", Some(body))?;
            v.get("token")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        }
        None => local(&args.target)?.mint(&req, None)?,
    };
    println!("{token}");
    Ok(())
}

fn admin(command: AdminCommand, target: &Target) -> CliResult {
    if let Some(remote) = Remote::of(target)? {
        return admin_remote(command, &remote);
    }
    let control = local(target)?;
    let out = match command {
        AdminCommand::Org {
            command: OrgCommand::Add { name, quota_bytes },
        } => control.change("admin.org.add", &name, &format!("org:{name}"), None, |r| {
            r.add_org(&name, quota_bytes).map(|o| json!(o))
        })?,
        AdminCommand::User {
            command:
                UserCommand::Add {
                    org,
                    name,
                    clearance,
                },
        } => control.change("admin.user.add", &org, &format!("user:{name}"), None, |r| {
            r.add_user(&org, &name, clearance).map(|u| json!(u))
        })?,
        AdminCommand::Device {
            command:
                DeviceCommand::Add {
                    org,
                    id,
                    kind,
                    max_clearance,
                },
        } => control.change(
            "admin.device.add",
            &org,
            &format!("device:{id}"),
            None,
            |r| {
                r.add_device(&org, &id, kind, max_clearance)
                    .map(|d| json!(d))
            },
        )?,
        AdminCommand::Device {
            command: DeviceCommand::Revoke { org, id },
        } => control.change(
            "admin.device.revoke",
            &org,
            &format!("device:{id}"),
            None,
            |r| {
                r.revoke_device(&org, &id)
                    .map(|()| json!({"org": org, "id": id, "revoked": true}))
            },
        )?,
        AdminCommand::Room {
            command:
                RoomCommand::Add {
                    org,
                    name,
                    classification,
                    secure_view,
                },
        } => control.change("admin.room.add", &org, &format!("room:{name}"), None, |r| {
            r.add_room(&org, &name, classification, secure_view)
                .map(|r| json!(r))
        })?,
        AdminCommand::Audit {
            command: AuditCommand::Verify,
        } => {
            let dir = data_dir(target);
            let head = control.registry().audit_head()?;
            return match audit::verify(&dir.audit_log(), head) {
                Ok(v) => {
                    println!(
                        "audit log intact: {} lines ({} after the last anchor)",
                        v.lines, v.unanchored
                    );
                    Ok(())
                }
                Err(e) => Err(CliError::Failure(e.to_string())),
            };
        }
    };
    println!("{out}");
    Ok(())
}

fn admin_remote(command: AdminCommand, remote: &Remote) -> CliResult {
    let (path, body) = match command {
        AdminCommand::Org {
            command: OrgCommand::Add { name, quota_bytes },
        } => (
            "/api/admin/orgs".to_string(),
            Some(json!({"name": name, "quota_bytes": quota_bytes})),
        ),
        AdminCommand::User {
            command:
                UserCommand::Add {
                    org,
                    name,
                    clearance,
                },
        } => {
            remote.same_org(&org)?;
            (
                "/api/admin/users".into(),
                Some(json!({"name": name, "clearance": clearance})),
            )
        }
        AdminCommand::Device {
            command:
                DeviceCommand::Add {
                    org,
                    id,
                    kind,
                    max_clearance,
                },
        } => {
            remote.same_org(&org)?;
            (
                "/api/admin/devices".into(),
                Some(json!({"id": id, "kind": kind, "max_clearance": max_clearance})),
            )
        }
        AdminCommand::Device {
            command: DeviceCommand::Revoke { org, id },
        } => {
            remote.same_org(&org)?;
            (format!("/api/admin/devices/{id}/revoke"), Some(json!({})))
        }
        AdminCommand::Room {
            command:
                RoomCommand::Add {
                    org,
                    name,
                    classification,
                    secure_view,
                },
        } => {
            remote.same_org(&org)?;
            (
                "/api/admin/rooms".into(),
                Some(
                    json!({"name": name, "classification": classification, "secure_view": secure_view}),
                ),
            )
        }
        AdminCommand::Audit {
            command: AuditCommand::Verify,
        } => {
            let v = remote.call("GET", "/api/admin/audit/verify", None)?;
            println!(
                "audit log intact: {} lines",
                v.get("lines").and_then(Value::as_u64).unwrap_or(0)
            );
            return Ok(());
        }
    };
    let v = remote.call("POST", &path, body)?;
    println!("{v}");
    Ok(())
}

fn data_dir(target: &Target) -> DataDir {
    DataDir::new(
        target
            .data
            .clone()
            .unwrap_or_else(|| Config::default().data_dir),
    )
}

/// The control plane over the data directory, for commands run on the appliance itself.
fn local(target: &Target) -> Result<Control, CliError> {
    let dir = data_dir(target);
    let secrets = dir
        .open()
        .map_err(|e| CliError::Usage(format!("data directory {}: {e}", dir.root.display())))?;
    let registry = Registry::open(&dir.db())?;
    let audit = AuditLog::open(&dir.audit_log(), &dir.db())
        .map_err(|e| CliError::Failure(e.to_string()))?;
    Ok(Control::new(
        registry,
        secrets.signing_key,
        audit,
        Metrics::new(),
        Config::default().tokens,
    ))
}

/// A running appliance's HTTP API.
struct Remote {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Remote {
    fn of(target: &Target) -> Result<Option<Remote>, CliError> {
        let Some(server) = &target.server else {
            return Ok(None);
        };
        let token = target
            .token
            .clone()
            .ok_or_else(|| CliError::Usage("--server needs --token or RELAY_TOKEN".into()))?;
        let base = if server.contains("://") {
            server.clone()
        } else {
            format!("http://{server}")
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Ok(Some(Remote {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::Agent::new_with_config(config),
        }))
    }

    /// The API limits an admin token to its own organisation; say so before asking.
    fn same_org(&self, org: &str) -> CliResult {
        let claims_org = token_org(&self.token);
        match claims_org {
            Some(o) if o != org => Err(CliError::Denied(format!(
                "denied (grant): the admin token is for organisation {o}, not {org}"
            ))),
            _ => Ok(()),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(body.unwrap_or(Value::Null).to_string()),
        };
        let mut resp = result.map_err(|e| CliError::Failure(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let code = v.get("error").and_then(Value::as_str).unwrap_or("error");
        let message = v.get("message").and_then(Value::as_str).unwrap_or("");
        let line = match v.get("line") {
            Some(l) => format!("{code} at line {l}: {message}"),
            None => format!("{code}: {message}"),
        };
        Err(match status {
            401 | 403 => CliError::Denied(format!("denied ({line})")),
            400 | 404 | 409 if code != "audit_broken" => CliError::Usage(line),
            _ => CliError::Failure(line),
        })
    }
}

/// The organisation a token names, read without checking it (the server checks).
fn token_org(token: &str) -> Option<String> {
    use base64::Engine;
    let claims = token.strip_prefix("v1.")?.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    let v: Value = serde_json::from_slice(&json).ok()?;
    v.get("org")?.as_str().map(String::from)
}
