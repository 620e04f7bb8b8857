//! Files and directories only the relay's own user may read: everything the relay writes is
//! 0600 and every directory it makes 0700, whatever the umask it was started with.
//!
//! A path is made with the mode asked for, and a path that exists already is brought down to
//! it, so a data directory left by an older build or prepared by an operator is tightened too.
//! SQLite gives its `-wal` and `-shm` files the mode of the database file, so a database opened
//! through [`file`] keeps them private as well.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates the directory `path` and any missing parents at 0700; an existing `path` is set to
/// 0700 (its parents are left as they are).
pub fn dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    tighten(path, DIR_MODE)
}

/// Creates the file `path` empty at 0600 if it is missing; an existing one is set to 0600.
pub fn file(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    tighten(path, FILE_MODE)
}

/// Options that create a file at 0600.
pub fn open_options() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn made_and_existing_paths_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);

        let f = d.join("f");
        file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        fs::write(&f, b"kept").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"kept");

        let g = d.join("g");
        open_options()
            .write(true)
            .create_new(true)
            .open(&g)
            .unwrap();
        assert_eq!(mode(&g), 0o600);
    }
}
