//! `relay token` and `relay admin`: on the data directory directly (`--data DIR`), or through a
//! running appliance's HTTP API (`--server URL --token T`, limited to that token's organisation).
//! Both paths apply the same [`AdminChange`] through the same [`Control`] checks, audited alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::error::{CliError, CliResult};
use crate::config::Config;
use crate::control::admin::{AdminChange, Change};
use crate::control::audit::{self, AuditLog};
use crate::control::model::DeviceKind;
use crate::control::token::Grant;
use crate::control::witness::{self, Witnesses};
use crate::control::{Control, MintRequest, parse_kind};
use crate::datadir::DataDir;
use crate::metrics::Metrics;

/// Where `token` and `admin` act: the data directory, or a running appliance.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Work on this data directory directly.
    #[arg(long, global = true, conflicts_with = "server")]
    pub data: Option<PathBuf>,
    /// The node's configuration, where its registry or signing key is not in the data directory
    /// (as in a cluster).
    #[arg(long, global = true, conflicts_with = "server")]
    pub config: Option<PathBuf>,
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
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    Notice {
        #[command(subcommand)]
        command: NoticeCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum NoticeCommand {
    /// Send an urgent notice to every open page of the organisation (or of one room), shown as
    /// a banner until dismissed.
    Send {
        #[arg(long)]
        org: String,
        /// Only the pages in this room.
        #[arg(long)]
        room: Option<String>,
        text: String,
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
    /// Remove a user; every token minted for it stops working at its next request, and its live
    /// media sessions end.
    Remove {
        #[arg(long)]
        org: String,
        name: String,
    },
    /// Change a user's clearance; it holds from the next request of any of its tokens.
    Set {
        #[arg(long)]
        org: String,
        name: String,
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
        clearance: u8,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Revoke one token by its id (`jti`, in the audit line of its minting and in the API's
    /// answer); it stops working at its next request.
    Revoke {
        #[arg(long)]
        org: String,
        id: String,
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
        /// The highest clearance this device may carry (default: 3 on the data directory, the
        /// admin's own clearance over the API).
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
        max_clearance: Option<u8>,
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
pub enum AuditCommand {
    /// Check the audit log's hash chain; names the first broken line.
    Verify {
        /// The outside witness's copy (the syslog server's file): name the first line that
        /// differs, and the lines missing on either side.
        #[arg(long)]
        witness: Option<PathBuf>,
    },
}
fn parse_grant(s: &str) -> Result<Grant, String> {
    Grant::parse(s.trim())
        .ok_or_else(|| format!("unknown grant {s:?} (publish, subscribe, files, record, admin)"))
}

pub fn token(args: TokenArgs) -> CliResult {
    let req = MintRequest {
        org: args.org,
        user: args.user,
        device: args.device,
        clearance: args.clearance,
        room: args.room,
        grants: Some(args.grants),
        ttl: args.ttl,
        not_after: None,
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
        None => local(&args.target)?.mint(&req, None)?.token,
    };
    println!("{token}");
    Ok(())
}

/// The registry change a command asks for, or for `audit verify` its witness file.
fn change_of(command: AdminCommand) -> Result<AdminChange, Option<PathBuf>> {
    Ok(match command {
        AdminCommand::Org {
            command: OrgCommand::Add { name, quota_bytes },
        } => AdminChange::new(name, Change::AddOrg { quota_bytes }),
        AdminCommand::User {
            command:
                UserCommand::Add {
                    org,
                    name,
                    clearance,
                },
        } => AdminChange::new(org, Change::AddUser { name, clearance }),
        AdminCommand::User {
            command: UserCommand::Remove { org, name },
        } => AdminChange::new(org, Change::RemoveUser { name }),
        AdminCommand::User {
            command:
                UserCommand::Set {
                    org,
                    name,
                    clearance,
                },
        } => AdminChange::new(org, Change::SetClearance { name, clearance }),
        AdminCommand::Device {
            command:
                DeviceCommand::Add {
                    org,
                    id,
                    kind,
                    max_clearance,
                },
        } => AdminChange::new(
            org,
            Change::AddDevice {
                id,
                kind,
                max_clearance,
            },
        ),
        AdminCommand::Device {
            command: DeviceCommand::Revoke { org, id },
        } => AdminChange::new(org, Change::RevokeDevice { id }),
        AdminCommand::Room {
            command:
                RoomCommand::Add {
                    org,
                    name,
                    classification,
                    secure_view,
                },
        } => AdminChange::new(
            org,
            Change::AddRoom {
                name,
                classification,
                secure_view,
            },
        ),
        AdminCommand::Token {
            command: TokenCommand::Revoke { org, id },
        } => AdminChange::new(org, Change::RevokeToken { id }),
        AdminCommand::Notice {
            command: NoticeCommand::Send { org, room, text },
        } => AdminChange::new(
            org,
            Change::SendNotice {
                room,
                text,
                // Over the API the relay names the admin; on the appliance, its operator.
                from: "operator".into(),
            },
        ),
        AdminCommand::Audit {
            command: AuditCommand::Verify { witness },
        } => return Err(witness),
    })
}

/// The admin API's request for a change: method, path and JSON body.
fn request_of(change: &AdminChange) -> (&'static str, String, Value) {
    match &change.change {
        Change::AddOrg { quota_bytes } => (
            "POST",
            "/api/admin/orgs".into(),
            json!({"name": change.org, "quota_bytes": quota_bytes}),
        ),
        Change::AddUser { name, clearance } => (
            "POST",
            "/api/admin/users".into(),
            json!({"name": name, "clearance": clearance}),
        ),
        Change::RemoveUser { name } => ("DELETE", format!("/api/admin/users/{name}"), json!({})),
        Change::SetClearance { name, clearance } => (
            "PATCH",
            format!("/api/admin/users/{name}"),
            json!({"clearance": clearance}),
        ),
        Change::AddDevice {
            id,
            kind,
            max_clearance,
        } => (
            "POST",
            "/api/admin/devices".into(),
            json!({"id": id, "kind": kind, "max_clearance": max_clearance}),
        ),
        Change::RevokeDevice { id } => {
            ("POST", format!("/api/admin/devices/{id}/revoke"), json!({}))
        }
        Change::AddRoom {
            name,
            classification,
            secure_view,
        } => (
            "POST",
            "/api/admin/rooms".into(),
            json!({"name": name, "classification": classification, "secure_view": secure_view}),
        ),
        Change::RevokeToken { id } => ("POST", format!("/api/admin/tokens/{id}/revoke"), json!({})),
        Change::SendNotice { room, text, .. } => (
            "POST",
            "/api/admin/notices".into(),
            json!({"text": text, "room": room}),
        ),
    }
}

pub fn admin(command: AdminCommand, target: &Target) -> CliResult {
    let remote = Remote::of(target)?;
    let change = match change_of(command) {
        Ok(c) => c,
        Err(witness) => return audit_verify(target, remote.as_ref(), witness.as_deref()),
    };
    let out = match remote {
        Some(remote) => {
            // The API limits an admin token to its own organisation, bar the organisation add
            // that it answers itself.
            if !matches!(change.change, Change::AddOrg { .. }) {
                remote.same_org(&change.org)?;
            }
            let (method, path, body) = request_of(&change);
            remote.call(method, &path, Some(body))?
        }
        None => local(target)?.apply(&change, None)?,
    };
    println!("{out}");
    Ok(())
}

fn audit_verify(target: &Target, remote: Option<&Remote>, witness: Option<&Path>) -> CliResult {
    if let Some(remote) = remote {
        if witness.is_some() {
            return Err(CliError::Usage(
                "--witness holds the data directory's log against the witness; use --data".into(),
            ));
        }
        // In a cluster each node keeps its own chain, anchored in the shared registry: every
        // live node checks its own, and one broken chain fails the whole check.
        let cluster = remote.call("GET", "/api/cluster", None)?;
        let nodes: Vec<(String, String)> = cluster["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n["id"].as_str()?.into(), n["url"].as_str()?.into())))
            .collect();
        if nodes.is_empty() {
            let v = remote.call("GET", "/api/admin/audit/verify", None)?;
            println!(
                "audit log intact: {} lines of this organisation",
                v.get("lines").and_then(Value::as_u64).unwrap_or(0)
            );
            return Ok(());
        }
        let mut broken = Vec::new();
        for (id, url) in nodes {
            let node = Remote {
                base: url,
                token: remote.token.clone(),
                agent: remote.agent.clone(),
            };
            match node.call("GET", "/api/admin/audit/verify", None) {
                Ok(v) => println!(
                    "node {id}: audit log intact: {} lines of this organisation",
                    v.get("lines").and_then(Value::as_u64).unwrap_or(0)
                ),
                Err(e) => {
                    println!("node {id}: {}", e.message());
                    broken.push(id);
                }
            }
        }
        if broken.is_empty() {
            return Ok(());
        }
        return Err(CliError::Failure(format!(
            "the audit chain of node {} did not verify",
            broken.join(", node ")
        )));
    }
    let control = local(target)?;
    let dir = DataDir::new(config(target)?.data_dir);
    let head = control.registry().audit_head()?;
    let v = audit::verify(&dir.audit_log(), head, None)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    println!(
        "audit log chain intact: {} lines ({} after the last anchor)",
        v.lines, v.unanchored
    );
    let Some(witness) = witness else {
        println!(
            "the chain has no outside witness in this check: whoever can write the data directory \
             can re-chain it; run with --witness FILE, the syslog server's copy (audit.syslog)"
        );
        return Ok(());
    };
    let c = witness::compare(&dir.audit_log(), witness)
        .map_err(|e| CliError::Failure(format!("{}: {e}", witness.display())))?;
    if c.agrees() {
        println!(
            "all {} lines match the witness {}",
            c.matched,
            witness.display()
        );
        return Ok(());
    }
    let mut why = vec![format!(
        "the audit log does not match the witness {} ({} lines match)",
        witness.display(),
        c.matched
    )];
    if let Some(first) = c.differing.first() {
        why.push(format!(
            "first line that differs: {first} (all that differ: {})",
            witness::ranges(&c.differing)
        ));
    }
    if !c.missing_locally.is_empty() {
        why.push(format!(
            "lines the witness holds and the log does not (removed or cut off): {}",
            witness::ranges(&c.missing_locally)
        ));
    }
    if !c.only_local.is_empty() {
        why.push(format!(
            "lines only the log holds (added behind the witness's back, or not delivered while it was away): {}",
            witness::ranges(&c.only_local)
        ));
    }
    if !c.bad_heads.is_empty() {
        why.push(format!(
            "chain heads the witness holds that the log does not reproduce: after lines {}",
            witness::ranges(&c.bad_heads)
        ));
    }
    Err(CliError::Failure(why.join("\n")))
}

/// The node's configuration (`--config`, else the embedded defaults) with `--data` over its
/// data directory.
fn config(target: &Target) -> Result<Config, CliError> {
    let mut config =
        Config::load(target.config.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(data) = &target.data {
        config.data_dir = data.clone();
    }
    Ok(config)
}

/// The control plane over the node's state, for commands run on the appliance itself.
fn local(target: &Target) -> Result<Control, CliError> {
    let config = config(target)?;
    let dir = DataDir::new(&config.data_dir);
    dir.open()
        .map_err(|e| CliError::Usage(format!("data directory {}: {e}", dir.root.display())))?;
    let registry = crate::node::registry(&config, &dir)?;
    let signing_key = crate::node::signing_key(&config, &dir)
        .map_err(|e| CliError::Usage(format!("token signing key: {e}")))?;
    let witnesses = Witnesses::new(dir.witness().as_deref())
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.audit_witness().display())))?;
    let audit = AuditLog::witnessed(
        &dir.audit_log(),
        crate::node::registry(&config, &dir)?,
        witnesses,
        config.audit.head_interval,
    )
    .map_err(|e| CliError::Failure(e.to_string()))?;
    Ok(Control::new(
        registry,
        signing_key,
        audit,
        Metrics::new(),
        config.tokens,
        crate::control::unix_now,
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
        let body = body.unwrap_or(Value::Null).to_string();
        let result = match method {
            "GET" => self.agent.get(&url).header("authorization", &auth).call(),
            "DELETE" => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            "PATCH" => self
                .agent
                .patch(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(body),
            _ => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .content_type("application/json")
                .send(body),
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
