//! Secret files: read (trimmed, never empty) or, for the forward-auth secret, created once
//! with 256 random bits, written atomically with mode 0600.

use std::io::Write;
use std::path::Path;

use crate::Error;

/// Reads a secret file. An empty file is an error: failing closed beats an empty secret.
pub fn read_secret(path: &Path) -> Result<String, Error> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(Error::Config(format!("{} is empty", path.display())));
    }
    Ok(s)
}

/// Reads the secret at `path`, or creates it (random, 0600, written atomically) if absent.
pub fn load_or_create_secret(path: &Path) -> Result<String, Error> {
    if path.exists() {
        return read_secret(path);
    }
    let secret = crate::app::random(32)?;
    write_private(path, format!("{secret}\n").as_bytes())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(secret)
}

/// Writes `bytes` to `path` atomically (a 0600 temporary file, fsync, rename, then the
/// directory's fsync), creating the directory if needed.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id()
    ));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/fa-secret");
        let a = load_or_create_secret(&p).unwrap();
        assert!(a.len() >= 43);
        assert_eq!(load_or_create_secret(&p).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, "  \n").unwrap();
        assert!(load_or_create_secret(&p)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
    }
}
