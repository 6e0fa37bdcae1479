//! The agent's program as a run sees it. Installers put agents where the sandbox empties
//! everything: Claude Code's own installer links `~/.local/bin/claude` to
//! `~/.local/share/claude/versions/X/claude`; `npm -g` with a user prefix, or under nvm, puts a
//! link in `~/.npm-global/bin` to a script inside its package, run by a `node` that may live in
//! `~/.nvm`. [`closure`] finds what a run needs of it: each symlink on the way (to be recreated
//! inside) and each installation tree (to be bound read-only at its own path), the script's
//! interpreter included.

use std::path::{Component, Path, PathBuf};

/// Emptied inside every run by the namespaces layer (tmpfs), unless bound back.
pub const EMPTIED: [&str; 5] = ["/tmp", "/var/tmp", "/home", "/root", "/run"];

/// How deep interpreters are followed (`#!/usr/bin/env node` → node's own links).
const MAX_INTERPRETERS: usize = 3;
/// Symlinks followed per path at most (as the kernel's limit).
const MAX_LINKS: usize = 40;
/// How far up from the program a package root (`package.json`) is looked for.
const MAX_PACKAGE_DEPTH: usize = 6;

/// What a run needs to see of its program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// The program as resolved on PATH (`/root/.local/bin/claude`).
    pub program: PathBuf,
    /// What it finally is (`/root/.local/share/claude/versions/1.0.0/claude`).
    pub real: PathBuf,
    /// Symlinks on the way: (the link, what it says), in order.
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Installation trees, real directories: the real file's directory, or its package's root.
    pub trees: Vec<PathBuf>,
    /// Interpreters found on the way (`/usr/bin/env node` → `/root/.nvm/.../bin/node`).
    pub interpreters: Vec<PathBuf>,
}

impl Closure {
    /// The links and trees that the namespaces layer would empty: those to bring back.
    pub fn emptied(&self) -> (Vec<&(PathBuf, PathBuf)>, Vec<&PathBuf>) {
        (
            self.links.iter().filter(|(l, _)| emptied(l)).collect(),
            self.trees.iter().filter(|t| emptied(t)).collect(),
        )
    }
}

/// What a run never sees under `profile`: the paths hidden always, and the profile's own.
pub fn hidden_paths(profile: &crate::Profile) -> Vec<PathBuf> {
    crate::profile::ALWAYS_HIDDEN
        .iter()
        .map(PathBuf::from)
        .chain(profile.hidden.iter().cloned())
        .collect()
}

/// Whether the namespaces layer empties `p`.
pub fn emptied(p: &Path) -> bool {
    EMPTIED.iter().any(|e| p.starts_with(e))
}

/// Lexically normal: `a/./b/../c` → `a/c` (for link targets, resolved against their directory).
fn normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Follows `p`'s symlinks (of its last component, then of the result, ...), noting each; the
/// directories on the way are resolved with `canonicalize`.
fn follow(p: &Path, links: &mut Vec<(PathBuf, PathBuf)>) -> Result<PathBuf, String> {
    let mut cur = match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => std::fs::canonicalize(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .join(n),
        _ => p.to_path_buf(),
    };
    for _ in 0..MAX_LINKS {
        let meta =
            std::fs::symlink_metadata(&cur).map_err(|e| format!("{}: {e}", cur.display()))?;
        if !meta.file_type().is_symlink() {
            return Ok(cur);
        }
        let target = std::fs::read_link(&cur).map_err(|e| format!("{}: {e}", cur.display()))?;
        let dir = cur.parent().unwrap_or(Path::new("/")).to_path_buf();
        links.push((cur.clone(), target.clone()));
        let next = normal(&dir.join(&target));
        cur = match (next.parent(), next.file_name()) {
            (Some(d), Some(n)) => std::fs::canonicalize(d)
                .map_err(|e| {
                    format!(
                        "{} (from {}): {e}",
                        d.display(),
                        links.last().unwrap().0.display()
                    )
                })?
                .join(n),
            _ => next,
        };
    }
    Err(format!("{}: more than {MAX_LINKS} symlinks", p.display()))
}

/// The installation tree of a real file: its package's root (the nearest directory above it
/// with a `package.json`, for npm layouts whose scripts load their siblings), else its own
/// directory. Never a home directory itself, nor `/tmp` or `/`.
fn tree(real: &Path) -> PathBuf {
    let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
    let too_wide = |d: &Path| {
        d == Path::new("/")
            || EMPTIED.iter().any(|e| d == Path::new(e))
            || d.parent() == Some(Path::new("/home"))
    };
    for d in dir.ancestors().take(MAX_PACKAGE_DEPTH) {
        if too_wide(d) {
            break;
        }
        if d.join("package.json").is_file() {
            return d.to_path_buf();
        }
    }
    dir
}

/// The interpreter a script names on its `#!` line, resolved on `path` for `/usr/bin/env X`.
fn interpreter(real: &Path, path: Option<&str>) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(real).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = String::from_utf8_lossy(line.split(|b| *b == b'\n').next()?).into_owned();
    let mut words = line.split_whitespace();
    let prog = PathBuf::from(words.next()?);
    if prog.file_name().is_some_and(|n| n == "env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        crate::helper::resolve(name, path)
    } else {
        Some(prog)
    }
}

/// What a run needs of `program` (a path, or a name looked up on `path`).
pub fn closure(program: &str, path: Option<&str>) -> Result<Closure, String> {
    let found = crate::helper::resolve(program, path)
        .ok_or_else(|| format!("{program:?} is not an executable file on PATH"))?;
    let mut c = Closure {
        program: found.clone(),
        ..Closure::default()
    };
    let mut next = Some(found);
    for depth in 0..=MAX_INTERPRETERS {
        let Some(p) = next.take() else { break };
        let real = follow(&p, &mut c.links)?;
        let t = tree(&real);
        if !c.trees.iter().any(|x| t.starts_with(x)) {
            c.trees.retain(|x| !x.starts_with(&t));
            c.trees.push(t);
        }
        if depth == 0 {
            c.real = real.clone();
        } else {
            c.interpreters.push(p);
        }
        next = interpreter(&real, path);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn exe(p: &Path, body: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn claude_codes_own_installer_layout() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join(".local/share/claude/versions/1.2.3/claude");
        exe(&real, "\x7fELF not really");
        let link = t.path().join(".local/bin/claude");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink("../share/claude/versions/1.2.3/claude", &link).unwrap();
        let c = closure(link.to_str().unwrap(), None).unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        assert_eq!(
            c.real,
            base.join(".local/share/claude/versions/1.2.3/claude")
        );
        assert_eq!(
            c.links,
            [(
                base.join(".local/bin/claude"),
                PathBuf::from("../share/claude/versions/1.2.3/claude")
            )]
        );
        assert_eq!(c.trees, [base.join(".local/share/claude/versions/1.2.3")]);
        assert!(c.interpreters.is_empty());
    }

    #[test]
    fn an_npm_package_and_its_interpreter_on_path() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let pkg = base.join(".npm-global/lib/node_modules/@scope/agent");
        std::fs::create_dir_all(pkg.join("dist")).unwrap();
        std::fs::write(pkg.join("package.json"), "{}").unwrap();
        exe(
            &pkg.join("dist/cli.js"),
            "#!/usr/bin/env -S node --no-warnings\nrequire('./x')\n",
        );
        let bin = base.join(".npm-global/bin");
        std::fs::create_dir_all(&bin).unwrap();
        symlink(
            "../lib/node_modules/@scope/agent/dist/cli.js",
            bin.join("agent"),
        )
        .unwrap();
        let nvm = base.join(".nvm/versions/node/v1/bin");
        exe(&nvm.join("node"), "\x7fELF");
        let path = format!("{}:{}:/usr/bin", bin.display(), nvm.display());
        let c = closure("agent", Some(&path)).unwrap();
        assert_eq!(c.real, pkg.join("dist/cli.js"));
        assert_eq!(c.trees, [pkg.clone(), nvm.clone()]);
        assert_eq!(c.interpreters, [nvm.join("node")]);
        let (links, trees) = c.emptied();
        // (tempdir is under /tmp here)
        if emptied(&base) {
            assert_eq!(links.len(), 1);
            assert_eq!(trees.len(), 2);
        }
    }

    #[test]
    fn a_system_program_needs_nothing_brought_back() {
        let c = closure("sh", Some("/usr/bin:/bin")).unwrap();
        let (links, trees) = c.emptied();
        assert!(links.is_empty() && trees.is_empty(), "{c:?}");
    }
}
