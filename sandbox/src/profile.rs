//! Sandbox profiles: which layers a run must have, and their settings. A profile travels in the
//! worker protocol's run frame and on the helper's command line, so it is plain data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One confinement layer, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Environment allowlist, closed inherited descriptors, own session and process group,
    /// parent-death signal, umask 077.
    Env,
    /// A dedicated uid and gid when edge runs as root.
    User,
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries give nothing.
    NoNewPrivs,
    /// Open files, file size, core dumps, processes per uid.
    Rlimits,
    /// Landlock: the workspace and the agent's home read-write, system paths read-only, the
    /// rest (secrets included) unreachable.
    Landlock,
    /// seccomp: no ptrace, bpf, mount, kernel modules, io_uring, raw, netlink or packet
    /// sockets, namespaces...
    Seccomp,
    /// bubblewrap: user, pid, mount, network, ipc and uts namespaces; private /tmp; /home,
    /// /root, /run and the docker socket hidden.
    Namespaces,
    /// A cgroup per run with memory and pids limits (v2, else v1).
    Cgroup,
    /// The only way out is an allowlist proxy (needs the network namespace).
    Egress,
}

impl Layer {
    pub const ALL: [Layer; 9] = [
        Layer::Env,
        Layer::User,
        Layer::NoNewPrivs,
        Layer::Rlimits,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::Namespaces,
        Layer::Cgroup,
        Layer::Egress,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layer::Env => "env",
            Layer::User => "user",
            Layer::NoNewPrivs => "no_new_privs",
            Layer::Rlimits => "rlimits",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::Namespaces => "namespaces",
            Layer::Cgroup => "cgroup",
            Layer::Egress => "egress",
        }
    }

    pub fn parse(s: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// A profile: what a run gets and which layers it cannot do without.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// Layers a run must have; a run whose required layer is unavailable does not start.
    pub require: Vec<Layer>,
    /// Layers not applied at all (for hosts that cannot have them, and for tests that show
    /// what each layer alone stops). Never also in `require`.
    #[serde(default)]
    pub disable: Vec<Layer>,
    /// The uid and gid runs use when edge runs as root.
    pub uid: u32,
    pub gid: u32,
    /// Memory limit of the run's cgroup, bytes.
    pub memory: u64,
    /// Process (task) limit of the run's cgroup, and `RLIMIT_NPROC`.
    pub pids: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size: u64,
    /// `host:port` the agent may reach through the egress proxy (`*.example.com:443` matches
    /// subdomains).
    pub egress: Vec<String>,
    /// Extra paths the agent may read (system paths are always readable).
    pub read_only: Vec<PathBuf>,
    /// Extra paths the agent may write (the workspace and its home always).
    pub read_write: Vec<PathBuf>,
    /// Paths hidden even where their parent is readable (`/etc/shadow` always).
    pub hidden: Vec<PathBuf>,
    /// Environment variables passed from edge's own environment, besides PATH, LANG and TERM.
    pub env: Vec<String>,
    /// The agents' home (their config, such as `~/.claude`); see [`Profile::home_for`].
    #[serde(default)]
    pub home: Option<PathBuf>,
}

/// Readable in every profile: what programs need to run. Everything else is out of reach.
pub const SYSTEM_READ_ONLY: [&str; 9] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/proc",
];

/// Hidden in every profile, even though `/etc` is readable.
pub const ALWAYS_HIDDEN: [&str; 3] = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers"];

/// Docker's sockets: never reachable.
pub const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// Never passed to an agent, even when named in `env`: credentials and agent sockets.
pub fn forbidden_env(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n == "SSH_AUTH_SOCK"
        || n == "DOCKER_HOST"
        || n.starts_with("AWS_")
        || n.ends_with("_TOKEN")
        || n.ends_with("_SECRET")
        || n.ends_with("_PASSWORD")
}

impl Profile {
    /// The built-in profile: every layer required, nobody's uid, 2 GiB, 256 tasks, the model
    /// API only.
    pub fn default_named(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            require: Layer::ALL.to_vec(),
            disable: Vec::new(),
            uid: 65534,
            gid: 65534,
            memory: 2 << 30,
            pids: 256,
            open_files: 1024,
            file_size: 1 << 30,
            egress: vec!["api.anthropic.com:443".into()],
            read_only: Vec::new(),
            read_write: Vec::new(),
            hidden: Vec::new(),
            env: Vec::new(),
            home: None,
        }
    }

    /// The agents' home: the profile's `home`, else `/var/lib/edge-agents/<profile>` when edge
    /// runs as root (a place the run's uid can reach; edge's state directory stays private),
    /// else `<state_dir>/agent-home/<profile>`.
    pub fn home_for(&self, state_dir: &std::path::Path) -> PathBuf {
        if let Some(h) = &self.home {
            return h.clone();
        }
        if nix::unistd::geteuid().is_root() {
            PathBuf::from("/var/lib/edge-agents").join(&self.name)
        } else {
            state_dir.join("agent-home").join(&self.name)
        }
    }

    pub fn requires(&self, l: Layer) -> bool {
        self.require.contains(&l)
    }

    pub fn enabled(&self, l: Layer) -> bool {
        !self.disable.contains(&l)
    }

    /// Does `host:port` pass the egress allowlist?
    pub fn egress_allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.egress.iter().any(|rule| {
            let Some((h, p)) = rule.rsplit_once(':') else {
                return false;
            };
            if p != "*" && p.parse::<u16>().ok() != Some(port) {
                return false;
            }
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(base) => host.ends_with(&format!(".{base}")),
                None => host == h,
            }
        })
    }
}

/// How a worker is to confine a run (in the worker protocol's run frame): the profile, and
/// the agent's home on the worker's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confine {
    pub profile: Profile,
    pub home: PathBuf,
}

/// What one confined run is: the profile, where it works, what it runs. Built by the worker
/// (or `edge sandbox run`) and handed to the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub profile: Profile,
    /// The agent's working tree (read-write).
    pub workspace: PathBuf,
    /// The agent's home: its config (`~/.claude`) lives here (read-write).
    pub home: PathBuf,
    /// Files the helper writes its pid into to join the run's cgroup.
    pub cgroup_procs: Vec<PathBuf>,
    /// The egress proxy's Unix socket, when the egress layer is on.
    pub egress_socket: Option<PathBuf>,
    /// Layers the outer part (cgroup, egress) could not set up, with why; the helper fails
    /// closed if one of them is required.
    pub missing: Vec<(Layer, String)>,
    /// Extra environment (from the run frame), after the allowlist.
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_match_host_and_port() {
        let mut p = Profile::default_named("t");
        p.egress = vec![
            "api.anthropic.com:443".into(),
            "*.example.org:443".into(),
            "forge.local:*".into(),
        ];
        assert!(p.egress_allows("api.anthropic.com", 443));
        assert!(p.egress_allows("API.Anthropic.com.", 443));
        assert!(!p.egress_allows("api.anthropic.com", 80));
        assert!(!p.egress_allows("evil.com", 443));
        assert!(!p.egress_allows("api.anthropic.com.evil.com", 443));
        assert!(p.egress_allows("git.example.org", 443));
        assert!(!p.egress_allows("example.org", 443));
        assert!(!p.egress_allows("badexample.org", 443));
        assert!(p.egress_allows("forge.local", 3000));
    }

    #[test]
    fn credentials_never_pass() {
        for k in [
            "SSH_AUTH_SOCK",
            "DOCKER_HOST",
            "GITHUB_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "db_password",
        ] {
            assert!(forbidden_env(k), "{k}");
        }
        for k in ["PATH", "LANG", "ANTHROPIC_BASE_URL"] {
            assert!(!forbidden_env(k), "{k}");
        }
    }

    #[test]
    fn layer_names_round_trip() {
        for l in Layer::ALL {
            assert_eq!(Layer::parse(l.name()), Some(l));
        }
        assert_eq!(Layer::parse("apparmor"), None);
    }
}
