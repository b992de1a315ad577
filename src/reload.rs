//! Policy hot reload: when `policy.dir` (or `policy.shadow_dir`) changes, or on SIGHUP, the
//! gateway loads the policy sets again (see [`Gateway::reload_policies`]).
//!
//! Changes are found by polling the directories' contents every `policy.watch_interval`, not
//! with file-system events: a Kubernetes ConfigMap volume changes by swapping a symlink, git
//! checkouts and editors replace files by rename, and network file systems send no events at
//! all; reading a few kilobytes of policy every two seconds notices all of them the same way.
//! A change is loaded once the directory has stopped changing for one short settle period, so
//! a policy copied file by file is not loaded half-way. A set that does not validate is
//! refused (its errors logged with file, line and column, `flowgate_policy_reload_total`
//! counts the failure) and is not tried again until its files change.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;
use crate::shutdown::Signal;

/// How long a changed directory must stay unchanged before it is loaded.
const SETTLE: Duration = Duration::from_millis(200);

/// A digest of what a policy directory would load: every `*.cedar` file and the schema, by
/// name and content. `None` when the directory cannot be read (the reload will say why).
pub fn fingerprint(dir: &Path) -> Option<u64> {
    let mut paths = crate::authz::policy_files(dir).ok()?;
    paths.push(dir.join(crate::authz::SCHEMA_FILE));
    let mut hasher = DefaultHasher::new();
    for path in paths {
        hasher.write(path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        hasher.write_u8(0);
        // A file that vanishes between listing and reading still changes the digest.
        hasher.write(&std::fs::read(&path).unwrap_or_default());
        hasher.write_u8(0);
    }
    Some(hasher.finish())
}

/// The digests of every watched directory.
fn fingerprints(dirs: &[PathBuf]) -> Vec<Option<u64>> {
    dirs.iter().map(|dir| fingerprint(dir)).collect()
}

async fn fingerprints_off_runtime(dirs: Arc<Vec<PathBuf>>) -> Vec<Option<u64>> {
    tokio::task::spawn_blocking(move || fingerprints(&dirs)).await.unwrap_or_default()
}

/// Reloads on SIGHUP, and on changes when `policy.watch_interval` is not zero, until shutdown.
pub fn spawn_policy_watch(gateway: Arc<Gateway>, mut shutdown: Signal) {
    let config = gateway.policy_config().clone();
    let dirs: Arc<Vec<PathBuf>> =
        Arc::new([Some(config.dir.clone()), config.shadow_dir.clone()].into_iter().flatten().collect());
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; policies reload only on change");
            None
        }
    };
    tokio::spawn(async move {
        let mut seen = fingerprints_off_runtime(dirs.clone()).await;
        let watching = !config.watch_interval.is_zero();
        let mut ticks = tokio::time::interval(if watching { config.watch_interval } else { Duration::from_secs(3600) });
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup_received = async {
                match &mut hangup {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = hangup_received => {
                    tracing::info!("SIGHUP: reloading policies");
                    seen = fingerprints_off_runtime(dirs.clone()).await;
                    gateway.reload_policies(true, true).await;
                }
                _ = ticks.tick(), if watching => {
                    let now = fingerprints_off_runtime(dirs.clone()).await;
                    if now == seen {
                        continue;
                    }
                    // Wait until the directories stop changing (a copy in progress).
                    let mut settled = now;
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        let again = fingerprints_off_runtime(dirs.clone()).await;
                        if again == settled {
                            break;
                        }
                        settled = again;
                    }
                    // Only the sets whose files changed are reloaded (and counted).
                    let changed = |index: usize| settled.get(index) != seen.get(index);
                    let (enforced, shadow) = (changed(0), changed(1));
                    seen = settled;
                    tracing::info!(enforced, shadow, "policy files changed: reloading");
                    gateway.reload_policies(enforced, shadow).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_policy_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cedar"), "permit(principal, action, resource);").unwrap();
        let first = fingerprint(dir.path()).unwrap();
        std::fs::write(dir.path().join("notes.md"), "not a policy").unwrap();
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        assert_eq!(fingerprint(dir.path()), Some(first), "other files do not count");
        std::fs::write(dir.path().join("a.cedar"), "forbid(principal, action, resource);").unwrap();
        let second = fingerprint(dir.path()).unwrap();
        assert_ne!(first, second, "content counts");
        std::fs::rename(dir.path().join("a.cedar"), dir.path().join("b.cedar")).unwrap();
        assert_ne!(fingerprint(dir.path()), Some(second), "names count");
        assert_eq!(fingerprint(&dir.path().join("missing")), None);
    }
}
