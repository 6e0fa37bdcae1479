//! `edge up`: issue certificates, build the gateway, bind the listeners, print where things
//! are, then serve until SIGTERM/SIGINT (drain) while SIGHUP reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edge_certs::local_project_certs;
use edge_gateway::{Gateway, ProjectCert, ReloadFn};
use edge_routing::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{load, Failure, Loaded};

/// The names an ACME certificate of project `p` must cover: with DNS-01 its apex and wildcard;
/// with HTTP-01, which cannot prove a wildcard, the exact hosts it serves (its apex, and in
/// subdomain mode each mount's host).
fn acme_names(config: &Config, p: usize) -> Vec<String> {
    if config.certs.acme.as_ref().map(|a| a.challenge) == Some(edge_routing::ChallengeKind::Dns01) {
        // DNS-01 proves the wildcard: the apex and every host below it.
        return edge_certs::project_names(&config.projects[p].name, &config.domain);
    }
    let apex = config.project_host(p);
    let mut names = vec![apex.clone()];
    if config.routing == edge_routing::RoutingMode::Subdomain {
        for r in &config.projects[p].routes {
            names.push(format!("{}.{apex}", r.mount));
        }
    }
    names
}

/// Certificates for every project, each from its issuer: the local CA in the state directory;
/// the files the operator provides (checked, never written); or the certificate an ACME CA
/// issued, with the local CA's standing in until the first one arrives (the ACME task swaps it
/// in). Relative file paths are under `base_dir`.
/// The local CA's certificate file, and whether this start created it.
type CaFile = Option<(PathBuf, bool)>;

pub(crate) fn project_certs(
    config: &Config,
    base_dir: &Path,
) -> anyhow::Result<(Vec<ProjectCert>, CaFile)> {
    if config.listen.https.is_none() {
        return Ok((Vec::new(), None));
    }
    let (ca, local) = local_project_certs(
        &config.state_dir,
        &config.domain,
        config.projects.iter().map(|p| p.name.as_str()),
    )?;
    let acme_store = edge_certs::Store::acme(&config.state_dir);
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::with_capacity(local.len());
    for (i, (host, local)) in local.into_iter().enumerate() {
        let p = &config.projects[i];
        let files = match config.issuer_of(i) {
            edge_routing::IssuerKind::Local => local,
            edge_routing::IssuerKind::Files => {
                let c = p.certs.as_ref();
                let (Some(cert), Some(key)) = (
                    c.and_then(|c| c.cert_file.as_ref()),
                    c.and_then(|c| c.key_file.as_ref()),
                ) else {
                    anyhow::bail!(
                        "projects[{i}].certs: issuer = \"files\" needs cert_file and key_file"
                    );
                };
                edge_certs::check_pair(
                    &base_dir.join(cert),
                    &base_dir.join(key),
                    &edge_certs::project_names(&p.name, &config.domain),
                )
                .with_context(|| format!("projects[{i}].certs ({})", p.name))?
            }
            edge_routing::IssuerKind::Acme => {
                match acme_store.load(&p.name, &acme_names(config, i)) {
                    Some(c) if c.not_after > now => c,
                    _ => local,
                }
            }
        };
        out.push(ProjectCert {
            host,
            chain_pem: files.chain_pem,
            key_pem: files.key_pem,
        });
    }
    Ok((out, Some((ca.cert_path(), ca.created()))))
}

/// Re-reads every project's certificate and swaps the set in when any changed (a renewed
/// local or ACME certificate, files replaced on disk): handshakes in progress, WebSockets and
/// downloads carry on.
async fn refresh_certs(
    gw: &Gateway,
    base_dir: &Path,
    last: &mut Vec<ProjectCert>,
    state: &crate::certs::CertState,
) {
    let cfg = gw.config();
    let dir = base_dir.to_path_buf();
    match tokio::task::spawn_blocking(move || project_certs(&cfg, &dir)).await {
        Ok(Ok((certs, _))) => {
            let same = certs.len() == last.len()
                && certs
                    .iter()
                    .zip(last.iter())
                    .all(|(a, b)| a.host == b.host && a.chain_pem == b.chain_pem);
            if same {
                return;
            }
            match gw.set_certs(&certs) {
                Ok(()) => {
                    tracing::info!(projects = certs.len(), "certificates swapped in");
                    *state.served.lock().unwrap_or_else(|e| e.into_inner()) = certs.clone();
                    *last = certs;
                }
                Err(e) => {
                    tracing::error!(error = %e, "new certificates were refused; the old ones keep serving")
                }
            }
        }
        Ok(Err(e)) => tracing::error!(
            error = format!("{e:#}"),
            "reading certificates failed; the old ones keep serving"
        ),
        Err(e) => tracing::error!(error = %e, "reading certificates panicked"),
    }
}

/// A pseudo-random fraction in [0, 1) from the clock, to spread retries (no `rand` for this).
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(n % 1000) / 1000.0
}

/// A fraction in [0, 1) fixed for one certificate, so its renewal time does not move between
/// passes while renewals of many projects still spread out (FNV-1a of the chain).
fn fraction_of(chain_pem: &str) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in chain_pem.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 10_000) as f64 / 10_000.0
}

/// ACME orders in flight at once, across projects.
const ORDERS_AT_ONCE: usize = 4;

/// How often a CA's renewal window is asked again, whatever its `Retry-After` says (RFC 9773
/// §4.3 asks clients to clamp it): at least a minute, at most a day.
fn clamp_ari_check(d: Duration) -> Duration {
    d.clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600))
}

/// When `current` is to be renewed and why: inside the CA's window when it offers ACME Renewal
/// Information (asked again when the CA says to), else when a third of its lifetime is left
/// (a little earlier for some, so many projects do not renew at once).
async fn plan_renewal(
    c: &edge_certs::AcmeClient,
    current: &edge_certs::CertFiles,
    r: &mut crate::certs::Renewal,
    ari: &mut Option<bool>,
) {
    let same_cert = r.chain.as_deref() == Some(current.chain_pem.as_str());
    let ask_ari = *ari != Some(false)
        && (!same_cert || r.ari_next.is_none_or(|t| tokio::time::Instant::now() >= t));
    if !same_cert {
        r.chain = Some(current.chain_pem.clone());
        r.at = None;
    }
    if ask_ari {
        match c.renewal_window(&current.chain_pem).await {
            None => *ari = Some(false),
            Some(Ok(w)) => {
                *ari = Some(true);
                let span = (w.end - w.start).max(time::Duration::ZERO);
                let at = w.start + span * fraction_of(&current.chain_pem);
                if r.at != Some(at) {
                    tracing::info!(not_after = %current.not_after, window_start = %w.start, window_end = %w.end, renew_at = %at, explanation = ?w.explanation, "the CA's renewal window (ARI)");
                }
                r.at = Some(at);
                r.why = format!(
                    "inside the CA's renewal window (ARI), {} to {}{}",
                    w.start,
                    w.end,
                    w.explanation.map(|u| format!(": {u}")).unwrap_or_default()
                );
                r.ari_next = Some(tokio::time::Instant::now() + clamp_ari_check(w.check_again));
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the CA's renewal window is not available; a third of the lifetime is the rule until it is");
                r.ari_next = Some(tokio::time::Instant::now() + Duration::from_secs(300));
            }
        }
    }
    if r.at.is_none() {
        let lifetime = current.not_after - current.not_before;
        let early: time::Duration = lifetime * (0.05 * fraction_of(&current.chain_pem));
        let at: time::OffsetDateTime = current.not_after - lifetime / 3 - early;
        r.at = Some(at.max(current.not_before));
        r.why = "a third of its lifetime left".into();
    }
}

/// Keeps every ACME project's certificate issued and renewed (see [`plan_renewal`]): one order
/// per project at a time, up to [`ORDERS_AT_ONCE`] projects at once. A failed order is retried
/// with jittered exponential backoff (1 min to 6 h), never before the CA's `Retry-After`,
/// while the old certificate keeps serving. What is planned is in [`crate::certs::CertState`]
/// (for `/metrics`) and `renewal.json` beside each certificate (for `edge certs`).
async fn acme_task(
    gw: Gateway,
    base_dir: PathBuf,
    answers: Arc<edge_certs::Http01Answers>,
    state: Arc<crate::certs::CertState>,
    stop: CancellationToken,
) {
    let mut client: Option<(edge_routing::AcmeConfig, edge_certs::AcmeClient)> = None;
    // Whether the CA offers ACME Renewal Information; unknown until asked.
    let mut ari: Option<bool> = None;
    let mut last = Vec::new();
    loop {
        let cfg = gw.config();
        let projects: Vec<usize> = (0..cfg.projects.len())
            .filter(|&i| cfg.issuer_of(i) == edge_routing::IssuerKind::Acme)
            .collect();
        if let (Some(acfg), false) = (&cfg.certs.acme, projects.is_empty()) {
            if client.as_ref().is_none_or(|(c, _)| c != acfg) {
                ari = None;
                match edge_certs::AcmeClient::connect(&cfg.state_dir, &base_dir, acfg).await {
                    Ok(c) => client = Some((acfg.clone(), c)),
                    Err(e) => {
                        client = None;
                        tracing::error!(error = %e, "the ACME account is not usable; retrying in a minute");
                    }
                }
            }
            if let Some((_, c)) = &client {
                let store = edge_certs::Store::acme(&cfg.state_dir);
                let mut due = Vec::new();
                for i in projects {
                    let name = cfg.projects[i].name.clone();
                    let names = acme_names(&cfg, i);
                    let current = store.load(&name, &names);
                    let mut r = state.renewal(&name);
                    match &current {
                        Some(f) => plan_renewal(c, f, &mut r, &mut ari).await,
                        None => {
                            r.chain = None;
                            r.at = None;
                            r.why = "no certificate from the CA yet".into();
                        }
                    }
                    let forced = state
                        .forced
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                    let now = time::OffsetDateTime::now_utc();
                    let is_due = forced || r.at.is_none_or(|at| now >= at);
                    let waiting = !forced && r.next_try.is_some_and(|t| now < t);
                    state.set_renewal(&cfg.state_dir, &name, r);
                    if is_due && !waiting {
                        due.push((name, names, current.map(|f| f.chain_pem)));
                    }
                }
                // A few orders at once (each project's one at a time): many projects are
                // issued in parallel without flooding the CA or its rate limits.
                use futures_util::StreamExt as _;
                let answers = &answers;
                let mut orders = futures_util::stream::iter(due.into_iter().map(
                    |(name, names, current)| async move {
                        let r = c.issue(&names, answers, current.as_deref()).await;
                        (name, r)
                    },
                ))
                .buffer_unordered(ORDERS_AT_ONCE);
                let mut account_gone = false;
                let mut issued_any = false;
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = orders.next() => n,
                    };
                    let Some((name, issued)) = next else { break };
                    let mut r = state.renewal(&name);
                    match issued.and_then(|(chain, key)| store.save(&name, &chain, &key)) {
                        Ok(f) => {
                            r.failures = 0;
                            r.backoff = None;
                            r.next_try = None;
                            state
                                .orders_ok
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let _ = std::fs::remove_file(crate::certs::last_error_path(
                                &cfg.state_dir,
                                &name,
                            ));
                            tracing::info!(project = %name, not_after = %f.not_after, "ACME certificate stored");
                            state.set_renewal(&cfg.state_dir, &name, r);
                            refresh_certs(&gw, &base_dir, &mut last, &state).await;
                            issued_any = true;
                        }
                        Err(e) => {
                            state
                                .orders_failed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let line = format!("{} {e}\n", time::OffsetDateTime::now_utc());
                            if let Err(w) = edge_certs::write_atomic(
                                &crate::certs::last_error_path(&cfg.state_dir, &name),
                                line.as_bytes(),
                                0o644,
                            ) {
                                tracing::warn!(error = %w, "could not record the ACME failure for edge certs");
                            }
                            r.failures += 1;
                            if e.account_gone() && !account_gone {
                                // The CA forgot the account (a test CA restarted, an account
                                // deactivated): a new one is made and the order placed again.
                                account_gone = true;
                                let path =
                                    edge_certs::account_path(&cfg.state_dir, &c_directory(&cfg));
                                let aside = path.with_extension(format!(
                                    "forgotten-{}",
                                    time::OffsetDateTime::now_utc().unix_timestamp()
                                ));
                                let _ = std::fs::rename(&path, &aside);
                                tracing::warn!(project = %name, error = %e, kept = %aside.display(), "the CA no longer knows edge's account; making a new one and ordering again");
                                state
                                    .forced
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(name.clone());
                                state.set_renewal(&cfg.state_dir, &name, r);
                                continue;
                            }
                            let backoff = r
                                .backoff
                                .map(|d| (d * 2).min(Duration::from_secs(6 * 3600)))
                                .unwrap_or(Duration::from_secs(60));
                            r.backoff = Some(backoff);
                            let mut wait = backoff.mul_f64(0.75 + jitter() / 2.0);
                            let now = time::OffsetDateTime::now_utc();
                            let mut honoured = false;
                            if let Some(until) = e.retry_after() {
                                let asked = Duration::try_from(until - now).unwrap_or_default();
                                if asked > wait {
                                    wait = asked;
                                    honoured = true;
                                }
                            }
                            r.next_try = Some(now + wait);
                            r.next_try_why = if honoured {
                                "the CA's Retry-After".into()
                            } else {
                                format!("backoff after {} failed orders", r.failures)
                            };
                            tracing::error!(project = %name, error = %e, retry_in = ?wait, retry_after_honoured = honoured, "ACME order failed; the current certificate keeps serving");
                            state.set_renewal(&cfg.state_dir, &name, r);
                        }
                    }
                }
                drop(orders);
                if account_gone {
                    client = None;
                    continue;
                }
                if issued_any {
                    // Plan the new certificates' renewals now (the CA's window for them).
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// The configured CA directory (where its account is kept).
fn c_directory(cfg: &Config) -> String {
    cfg.certs
        .acme
        .as_ref()
        .map(|a| a.directory.clone())
        .unwrap_or_default()
}

pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn run(loaded: Loaded, state_dir_flag: Option<PathBuf>) -> Result<(), Failure> {
    init_tracing(loaded.config.log.json);
    // `workers = 1`: everything on one thread. Otherwise the control plane and the chat share a
    // work-stealing runtime with a thread per core, and the listeners are served by
    // `proxy_workers()` threads of their own (see `spawn_proxy_workers`).
    let workers = loaded.config.listen.proxy_workers();
    let single = loaded.config.listen.workers == 1;
    let rt = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2),
            )
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    rt.block_on(serve(loaded, state_dir_flag, workers, single))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding listen.{what} {addr}"))
        .map_err(Failure::from)
}

async fn serve(
    loaded: Loaded,
    state_dir_flag: Option<PathBuf>,
    workers: usize,
    single: bool,
) -> Result<(), Failure> {
    let Loaded {
        config,
        path,
        base_dir,
    } = loaded;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    // The projects `edge register` added, beside the file's.
    let config = crate::register::effective(&config);
    let (certs, ca_path) = project_certs(&config, &base_dir).context("preparing certificates")?;
    let gateway = Gateway::new(config.clone(), &base_dir, &certs).map_err(Failure::config)?;
    gateway.set_config_file(path.clone());
    let answers = Arc::new(edge_certs::Http01Answers::default());
    {
        let a = answers.clone();
        gateway.set_http01_answers(Arc::new(move |token| a.get(token)));
    }
    let cert_state = Arc::new(crate::certs::CertState::default());
    *cert_state.served.lock().unwrap_or_else(|e| e.into_inner()) = certs.clone();
    {
        let (s, gw) = (cert_state.clone(), gateway.clone());
        gateway.set_cert_renewal(Arc::new(move |p| s.renew(&gw.config(), p)));
    }
    let chat = crate::chat::open(&config)?;
    if let Some((_, secret)) = &chat {
        gateway
            .set_forward_auth_secret(secret)
            .map_err(Failure::config)?;
    }
    let chat = chat.map(|(c, _)| c);
    {
        // Certificates and ACME orders, then the chat's runs.
        let (s, gw, c) = (cert_state.clone(), gateway.clone(), chat.clone());
        gateway.set_extra_metrics(Arc::new(move || {
            let mut text = s.metrics(&gw.config());
            if let Some(c) = &c {
                let o = c.orchestrator();
                text.push_str(&o.metrics.render(&o.outpost_status()));
            }
            text
        }));
    }
    if let Some(c) = &chat {
        let status = c.clone();
        gateway.set_outposts_status(std::sync::Arc::new(move || status.outposts_json()));
        // `edge chat login-url` asks this edge, so that the link is made by its own chat.
        let (c, gw, handle) = (
            c.clone(),
            gateway.clone(),
            tokio::runtime::Handle::current(),
        );
        gateway.set_chat_login(Arc::new(move |project| {
            let (base, user) =
                crate::chat::login_target(&gw.config(), project).map_err(|e| format!("{e:#}"))?;
            handle
                .block_on(c.login_url(&base, &user))
                .map_err(|e| e.to_string())
        }));
    }

    let https = match config.listen.https {
        Some(a) => Some(bind(a, "https").await?),
        None => None,
    };
    let http = match config.listen.http {
        Some(a) => Some(bind(a, "http").await?),
        None => None,
    };
    let admin = match config.listen.admin {
        Some(a) => Some(bind(a, "admin").await?),
        None => None,
    };
    let chat_listener = crate::chat::bind(&config).await?;

    let reload: Option<ReloadFn> = path.clone().map(|p| {
        let gw = gateway.clone();
        let flag = state_dir_flag.clone();
        let chat = chat.clone();
        let f: ReloadFn = Arc::new(move || reload_from(&gw, chat.as_ref(), &p, flag.as_deref()));
        f
    });

    let token = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut https_port = None;
    // The data plane's listeners (HTTPS, HTTP), served below.
    let mut data = Vec::new();
    if let Some(l) = https {
        let addr = l.local_addr().context("listener address")?;
        https_port = Some(addr.port());
        tracing::info!(%addr, workers, "serving HTTPS (HTTP/1.1 and HTTP/2)");
        data.push((l, true));
    }
    if let Some(l) = http {
        let addr = l.local_addr().context("listener address")?;
        if config.listen.http_redirect {
            tracing::info!(%addr, "serving HTTP: redirects to HTTPS");
        } else {
            tracing::info!(%addr, "serving HTTP: the mounts, unencrypted (put a TLS tunnel in front)");
        }
        data.push((l, false));
    }
    if single {
        for (l, tls) in data {
            tasks.spawn(serve_listener(gateway.clone(), l, tls, token.clone()));
        }
    } else {
        spawn_proxy_workers(workers, data, &gateway, &token, &mut tasks)?;
    }
    if let Some(l) = admin {
        let addr = l.local_addr().context("listener address")?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the admin listener is not on loopback and has no authentication");
        }
        tracing::info!(%addr, "admin: /healthz /readyz /metrics /outposts, POST /reload");
        let gw = gateway.clone();
        let t = token.clone();
        let reload = reload.clone();
        tasks.spawn(async move { gw.serve_admin(l, reload, t.cancelled_owned()).await });
    }
    crate::register::start(&gateway, &base_dir, token.clone(), &mut tasks).await?;
    if let (Some(chat), Some(l)) = (&chat, chat_listener) {
        let addr = l.local_addr().context("listener address")?;
        tracing::info!(%addr, login = config.chat.as_ref().map(|c| c.login.as_str()), "serving the chat");
        let chat = chat.clone();
        let t = token.clone();
        tasks.spawn(async move {
            if let Err(e) = chat.serve(l, t.cancelled_owned()).await {
                tracing::error!(error = %e, "the chat listener failed");
            }
        });
    }
    print_welcome(
        &config,
        https_port,
        ca_path.as_ref().map(|(p, created)| (p.as_path(), *created)),
    );
    if let Some(chat) = &chat {
        crate::chat::print_login_url(chat, &config, https_port).await;
    }

    // Certificates are re-read every 10 s and swapped in when one changed: local leaves
    // re-issued with a third of their 90 days left, files replaced on disk, ACME certificates
    // the ACME task stored.
    if config.listen.https.is_some() {
        let gw = gateway.clone();
        let t = token.clone();
        let dir = base_dir.clone();
        let mut last = certs.clone();
        let state = cert_state.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tick.tick() => {}
                }
                refresh_certs(&gw, &dir, &mut last, &state).await;
            }
        });
        let gw = gateway.clone();
        let t = token.clone();
        let dir = base_dir.clone();
        tasks.spawn(acme_task(gw, dir, answers.clone(), cert_state.clone(), t));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("SIGHUP handler")?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("SIGUSR1 handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            // logrotate's `postrotate`: the access log file is opened anew.
            _ = usr1.recv() => gateway.reopen_logs(),
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => match &reload {
                Some(f) => {
                    let f = f.clone();
                    match tokio::task::spawn_blocking(move || f()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!("reload refused, the old config stays: {e}"),
                        Err(e) => tracing::error!(error = %e, "reload panicked"),
                    }
                }
                None => tracing::warn!("SIGHUP ignored: edge runs the embedded default, there is no file to re-read"),
            },
            Some(r) = tasks.join_next() => {
                if let Err(e) = r { tracing::error!(error = %e, "a listener task failed"); }
            }
        }
    }
    let grace = gateway.config().limits.shutdown_grace;
    tracing::info!(?grace, "shutting down: draining in-flight requests");
    gateway.start_draining();
    token.cancel();
    while tasks.join_next().await.is_some() {}
    if !gateway
        .wait_streams(
            grace
                .min(Duration::from_secs(5))
                .max(Duration::from_millis(100)),
        )
        .await
    {
        tracing::info!("closing open WebSockets");
    }
    if let Some(c) = &chat {
        c.close_outposts().await;
    }
    let gw = gateway.clone();
    let _ = tokio::task::spawn_blocking(move || gw.flush_logs(Duration::from_secs(2))).await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves one data-plane listener until `token` is cancelled, then drains it.
async fn serve_listener(gw: Gateway, l: TcpListener, tls: bool, token: CancellationToken) {
    if tls {
        if let Err(e) = gw.serve_https(l, token.cancelled_owned()).await {
            tracing::error!(error = %e, "HTTPS listener failed");
        }
    } else {
        gw.serve_http(l, token.cancelled_owned()).await;
    }
}

/// nginx's process model with threads: `workers` threads, each with its own single-threaded
/// runtime accepting from the same listening sockets, so a connection lives on one thread and
/// no request crosses threads. Measured against one work-stealing runtime of the same size: the
/// same throughput, and the p99 over HTTP no longer twice nginx's (docs/benchmarks.md). The
/// control plane (reloads, certificates, the chat, the tunnel) stays on the main runtime.
fn spawn_proxy_workers(
    workers: usize,
    data: Vec<(TcpListener, bool)>,
    gateway: &Gateway,
    token: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), Failure> {
    let mut listeners = Vec::new();
    for (l, tls) in data {
        listeners.push((
            l.into_std().context("taking a listener off the runtime")?,
            tls,
        ));
    }
    for i in 0..workers {
        let mut mine = Vec::new();
        for (l, tls) in &listeners {
            mine.push((l.try_clone().context("sharing a listener")?, *tls));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a worker's runtime")?;
        let gw = gateway.clone();
        let t = token.clone();
        let thread = std::thread::Builder::new()
            .name(format!("edge-worker-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let mut set = tokio::task::JoinSet::new();
                    for (l, tls) in mine {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                set.spawn(serve_listener(gw.clone(), l, tls, t.clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "a worker could not listen"),
                        }
                    }
                    while set.join_next().await.is_some() {}
                })
            })
            .context("starting a worker thread")?;
        tasks.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        });
    }
    Ok(())
}

/// Re-reads the config file, issues any certificates it needs, and swaps both in.
fn reload_from(
    gw: &Gateway,
    chat: Option<&edge_chat::Chat>,
    path: &Path,
    state_dir_flag: Option<&Path>,
) -> Result<(), String> {
    let loaded = load(Some(path), state_dir_flag).map_err(|e| format!("{e:#}"))?;
    let old = gw.config();
    if old.listen != loaded.config.listen {
        tracing::warn!("listen.* changed: listeners are re-bound only on restart");
    }
    match (chat, &loaded.config.chat) {
        (Some(c), Some(new)) => {
            if old.chat.as_ref().map(|o| o.listen) != Some(new.listen) {
                tracing::warn!("chat.listen changed: the chat is re-bound only on restart");
            }
            c.reload(loaded.config.clone())
                .map_err(|e| format!("the chat refused the new config: {e}"))?;
        }
        (None, Some(_)) => tracing::warn!("the config now has a chat: restart edge to start it"),
        _ => {}
    }
    let config = crate::register::effective(&loaded.config);
    let (certs, _) = project_certs(&config, &loaded.base_dir).map_err(|e| format!("{e:#}"))?;
    gw.reload(config, &loaded.base_dir, &certs)
        .map_err(|e| e.to_string())?;
    tracing::info!(config = %path.display(), "config reloaded");
    Ok(())
}

fn print_welcome(config: &Config, https_port: Option<u16>, ca: Option<(&Path, bool)>) {
    // The URLs users should open: HTTPS when it is served, else the plain listener.
    let (scheme, port) = match (https_port, config.listen.http) {
        (Some(443), _) => ("https", String::new()),
        (Some(p), _) => ("https", format!(":{p}")),
        (None, Some(a)) if a.port() == 80 => ("http", String::new()),
        (None, Some(a)) => ("http", format!(":{}", a.port())),
        (None, None) => ("http", String::new()),
    };
    println!();
    for p in &config.projects {
        let host = format!("{}.{}", p.name, config.domain);
        match config.routing {
            edge_routing::RoutingMode::Subpath => {
                println!("  project {}: {scheme}://{host}{port}/", p.name);
                for r in &p.routes {
                    println!("    {scheme}://{host}{port}/{}/", r.mount);
                }
            }
            edge_routing::RoutingMode::Subdomain => {
                println!("  project {}: {scheme}://{host}{port}/", p.name);
                for r in &p.routes {
                    println!("    {scheme}://{}.{host}{port}/", r.mount);
                }
            }
        }
    }
    let local =
        (0..config.projects.len()).any(|i| config.issuer_of(i) != edge_routing::IssuerKind::Files);
    if let (Some((ca, created)), true) = (ca, local) {
        println!();
        if created {
            println!(
                "  A new local CA was created in {}: browsers that trusted edge's CA from another",
                ca.parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            println!("  state directory will warn until you trust this one.");
        }
        let acme = (0..config.projects.len())
            .any(|i| config.issuer_of(i) == edge_routing::IssuerKind::Acme);
        println!(
            "  Certificates come from a local CA (valid for *.{} only){}. To trust it:",
            config.domain,
            if acme {
                " until the ACME CA issues them"
            } else {
                ""
            }
        );
        println!(
            "    this machine and its browsers:  edge trust   (and the --config edge up was given, if any)"
        );
        println!(
            "    curl:                           curl --cacert {} https://...",
            ca.display()
        );
    }
    println!();
}

/// A connection to the running edge's admin listener, or an error that says what to do.
fn connect_admin(admin: &str) -> Result<std::net::TcpStream, Failure> {
    std::net::TcpStream::connect(admin).map_err(|e| {
        Failure::from(anyhow::anyhow!(
            "no edge answers on the admin listener {admin} ({e}): start it with `edge up`, or, if it runs with another config, pass that --config (its listen.admin)"
        ))
    })
}

/// A GET on the admin listener; the body of a 200, else an error with the answer.
pub fn admin_get(admin: &str, path: &str) -> Result<String, Failure> {
    use std::io::{Read, Write};
    let mut s = connect_admin(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .context("socket")?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .context("sending")?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("reading the answer")?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(Failure::from(anyhow::anyhow!(
            "{admin}{path}: {}",
            body.trim()
        )))
    }
}

/// `edge reload`: POST /reload on the admin listener.
pub fn post_reload(admin: &str) -> Result<(), Failure> {
    post_admin(admin, "/reload")
}

/// POSTs to the admin listener; prints the answer, an error unless it is 2xx.
pub fn post_admin(admin: &str, path: &str) -> Result<(), Failure> {
    let s = connect_admin(admin)?;
    let (ok, body) = admin_post_on(s, admin, path)?;
    if ok {
        println!("{body}");
        Ok(())
    } else {
        Err(Failure::config(anyhow::anyhow!("{body}")))
    }
}

/// A POST on an open connection to the admin listener: (2xx, the body trimmed).
pub fn admin_post_on(
    mut s: std::net::TcpStream,
    admin: &str,
    path: &str,
) -> Result<(bool, String), Failure> {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .context("socket")?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .context("sending")?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("reading the answer")?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.starts_with("HTTP/1.1 2"), body.trim().to_string()))
}
