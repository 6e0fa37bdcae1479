//! Secret files: read (trimmed, never empty) or, for the forward-auth secret, created once
//! with 256 random bits, written atomically with mode 0600.

pub(crate) use edge_workers::write_private;
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
    let secret = crate::ids::random(32)?;
    write_private(path, format!("{secret}\n").as_bytes())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(secret)
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
