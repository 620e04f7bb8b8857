//! The data directory: where the appliance keeps its state, and its first-start initialisation.
//!
//! A fresh (missing or empty) directory is initialised: database with the `demo` organisation,
//! token signing key, self-signed TLS certificate. A directory that holds some of these but not
//! all is an error, never a silent reset: a lost signing key would invalidate every token and a
//! lost database every registration, so the operator decides.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::control::model::DeviceKind;
use crate::control::registry::{Registry, RegistryError};
use crate::control::sqlite::SqliteRegistry;
use crate::control::token::SigningKey;

/// The demo organisation created on first start, so the web client works at once.
pub const DEMO_ORG: &str = "demo";
pub const DEMO_USER: &str = "demo";
pub const DEMO_DEVICE: &str = "demo-browser";
pub const DEMO_ROOM: &str = "lobby";

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

/// The secrets and certificate loaded from a data directory.
#[derive(Debug)]
pub struct Secrets {
    pub signing_key: SigningKey,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("{path}: {1}", path = .0.display())]
    Io(PathBuf, std::io::Error),
    /// Initialised before, but a part is gone.
    #[error("{} is missing from an initialised data directory; restore it from a backup, or move the directory away to start afresh", .0.display())]
    Missing(PathBuf),
    /// A file is there but not usable.
    #[error("{path}: {1}", path = .0.display())]
    Invalid(PathBuf, String),
    #[error(transparent)]
    Registry(RegistryError),
}

impl From<RegistryError> for DataDirError {
    fn from(e: RegistryError) -> Self {
        DataDirError::Registry(e)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |e| DataDirError::Io(path.to_path_buf(), e)
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("relay.db")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.root.join("token.key")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("tls.crt")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls.key")
    }
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }
    /// The audit witness the appliance was started with (`audit.syslog`), so that commands
    /// working on the directory itself (`relay admin --data`) send their lines there too.
    pub fn audit_witness(&self) -> PathBuf {
        self.root.join("audit.witness")
    }

    /// Records the appliance's audit witness, or that it has none.
    pub fn record_witness(&self, url: Option<&str>) -> Result<(), DataDirError> {
        let path = self.audit_witness();
        match url {
            Some(url) => write_atomic(&path, format!("{url}\n").as_bytes()),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
                _ => Ok(()),
            },
        }
    }

    /// The audit witness recorded by the appliance, if any. Whoever could change this file could
    /// only keep lines from the witness, and `audit verify --witness` names every such line.
    pub fn witness(&self) -> Option<String> {
        fs::read_to_string(self.audit_witness())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn parts(&self) -> [PathBuf; 4] {
        [self.db(), self.signing_key(), self.cert(), self.tls_key()]
    }

    /// Initialises the directory if it is fresh, then loads it. Returns whether it was fresh.
    pub fn init_or_open(
        &self,
        subject_alt_names: &[String],
    ) -> Result<(Secrets, bool), DataDirError> {
        let fresh = !self.parts().iter().any(|p| p.exists());
        if fresh {
            self.initialise(subject_alt_names)?;
        }
        Ok((self.open()?, fresh))
    }

    /// Loads an initialised directory; every part must be present and sound. The directory and
    /// what the relay keeps in it are made private to its user, as they would be when new.
    pub fn open(&self) -> Result<Secrets, DataDirError> {
        for part in self.parts() {
            if !part.exists() {
                return Err(DataDirError::Missing(part));
            }
        }
        create_private_dir(&self.root)?;
        for part in self.parts().iter().chain([&self.audit_log()]) {
            if part.exists() {
                crate::private::file(part).map_err(io(part))?;
            }
        }
        // Opening checks the database's integrity and schema.
        SqliteRegistry::open(&self.db())?;
        let key = read_signing_key(&self.signing_key())?;
        let cert_path = self.cert();
        let cert_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let cert_der = pem_body(&cert_pem, "CERTIFICATE").ok_or_else(|| {
            DataDirError::Invalid(cert_path.clone(), "not a PEM certificate".into())
        })?;
        let tls_key_path = self.tls_key();
        let key_pem = fs::read_to_string(&tls_key_path).map_err(io(&tls_key_path))?;
        if pem_body(&key_pem, "PRIVATE KEY").is_none() {
            return Err(DataDirError::Invalid(
                tls_key_path,
                "not a PEM private key".into(),
            ));
        }
        Ok(Secrets {
            signing_key: key,
            cert_pem,
            key_pem,
            cert_der,
        })
    }

    fn initialise(&self, subject_alt_names: &[String]) -> Result<(), DataDirError> {
        create_private_dir(&self.root)?;
        let key = crate::random_bytes::<32>();
        write_atomic(&self.signing_key(), &key)?;
        let certified =
            rcgen::generate_simple_self_signed(subject_alt_names.to_vec()).map_err(|e| {
                DataDirError::Invalid(self.cert(), format!("cannot generate certificate: {e}"))
            })?;
        write_atomic(
            &self.tls_key(),
            certified.signing_key.serialize_pem().as_bytes(),
        )?;
        write_atomic(&self.cert(), certified.cert.pem().as_bytes())?;
        // The database goes last: its presence marks the directory as initialised.
        let tmp = self.root.join("relay.db.init");
        let _ = fs::remove_file(&tmp);
        {
            let reg = SqliteRegistry::open_or_create(&tmp)?;
            reg.add_org(DEMO_ORG, None)?;
            reg.add_user(DEMO_ORG, DEMO_USER, 1)?;
            reg.add_device(DEMO_ORG, DEMO_DEVICE, DeviceKind::Browser, 1)?;
            reg.add_room(DEMO_ORG, DEMO_ROOM, 0, false)?;
            // Fold the WAL into the main file so one rename moves the whole database.
            reg.checkpoint()?;
        }
        for suffix in ["-wal", "-shm"] {
            let _ = fs::remove_file(self.root.join(format!("relay.db.init{suffix}")));
        }
        fs::rename(&tmp, self.db()).map_err(io(&tmp))?;
        sync_dir(&self.root)
    }
}

/// Reads a token signing key: a file of exactly 32 bytes.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, DataDirError> {
    let key = fs::read(path).map_err(io(path))?;
    let key: [u8; 32] = key.try_into().map_err(|k: Vec<u8>| {
        DataDirError::Invalid(
            path.to_path_buf(),
            format!("{} bytes, expected 32", k.len()),
        )
    })?;
    Ok(SigningKey::from_bytes(key))
}

/// Creates `path` and any missing parents, private to the owner (0700).
pub fn create_private_dir(path: &Path) -> Result<(), DataDirError> {
    crate::private::dir(path).map_err(io(path))
}

/// Writes a file so that it is either absent or whole: temp file, fsync, rename, directory fsync.
/// Private (0600): these files hold secrets. The temp file's name is new for every call, so two
/// writers of the same path never share one; it is removed when the write fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", hex::encode(crate::random_bytes::<6>())));
    let tmp = path.with_file_name(name);
    let written = crate::private::open_options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(io(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io(path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The DER bytes of the first PEM block labelled `label`.
pub fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    #[test]
    fn atomic_writes_are_private_whole_and_leave_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key")]);
        // A write that cannot land leaves nothing behind.
        let blocked = tmp.path().join("dir");
        fs::create_dir(&blocked).unwrap();
        assert!(write_atomic(&blocked, b"x").is_err());
        let mut names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("dir"), "key".into()]);
    }

    #[test]
    fn first_start_creates_everything_and_second_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let (a, fresh) = dir.init_or_open(&sans()).unwrap();
        assert!(fresh);
        let (b, fresh) = dir.init_or_open(&sans()).unwrap();
        assert!(!fresh);
        assert_eq!(a.signing_key.as_bytes(), b.signing_key.as_bytes());
        assert_eq!(a.cert_der, b.cert_der);
        let reg = SqliteRegistry::open(&dir.db()).unwrap();
        assert!(reg.device(DEMO_ORG, DEMO_DEVICE).unwrap().is_some());
        assert!(reg.room(DEMO_ORG, DEMO_ROOM).unwrap().is_some());
    }

    #[test]
    fn missing_part_is_an_error_not_a_reset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        dir.init_or_open(&sans()).unwrap();
        for part in [dir.signing_key(), dir.db()] {
            let saved = fs::read(&part).unwrap();
            fs::remove_file(&part).unwrap();
            let err = dir.init_or_open(&sans()).unwrap_err();
            assert!(
                matches!(err, DataDirError::Missing(ref p) if *p == part),
                "{err}"
            );
            fs::write(&part, saved).unwrap();
        }
        dir.init_or_open(&sans()).unwrap();
    }

    #[test]
    fn short_key_and_corrupt_database_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        dir.init_or_open(&sans()).unwrap();
        fs::write(dir.signing_key(), b"short").unwrap();
        assert!(matches!(dir.open(), Err(DataDirError::Invalid(..))));
        fs::write(dir.signing_key(), [1u8; 32]).unwrap();
        fs::write(dir.db(), vec![0x42; 4096]).unwrap();
        let err = dir.open().unwrap_err();
        assert!(
            matches!(err, DataDirError::Registry(RegistryError::Corrupt(_))),
            "{err}"
        );
    }
}
