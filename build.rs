//! Stamps the build with the commit it was built from, for `flowgate --version`,
//! `flowgate_build_info` and the User-Agent of outbound requests.
//!
//! `FLOWGATE_COMMIT` in the environment wins (a container or release build from a tree without
//! `.git`); otherwise `git rev-parse HEAD` in the source tree; otherwise `unknown`. The script
//! runs again when HEAD moves (a commit, a checkout), not on every edit: a build from a tree
//! with uncommitted changes reports the commit it started from.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FLOWGATE_COMMIT");
    let commit = std::env::var("FLOWGATE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_head)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FLOWGATE_COMMIT={}", commit.trim());
}

fn git_head() -> Option<String> {
    let git_dir = Command::new("git").args(["rev-parse", "--git-dir"]).output().ok().filter(|o| o.status.success())?;
    let git_dir = Path::new(String::from_utf8(git_dir.stdout).ok()?.trim()).to_path_buf();
    // HEAD names a branch; the branch's ref file (or packed-refs) moves with each commit.
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git_dir.join(reference).display());
        println!("cargo:rerun-if-changed={}", git_dir.join("packed-refs").display());
    }
    let output = Command::new("git").args(["rev-parse", "HEAD"]).output().ok().filter(|o| o.status.success())?;
    String::from_utf8(output.stdout).ok().map(|s| s.trim().to_owned()).filter(|s| s.len() == 40)
}
