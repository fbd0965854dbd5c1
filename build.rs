//! Build metadata: the git commit the binary is built from, for `shardmq --version` and
//! the `shardmq_build_info` series. "unknown" when git or the repository is absent (a
//! source tarball, a vendored copy inside someone else's repository). It is the commit
//! HEAD names: uncommitted changes are not marked (watching every source file for them
//! would re-run this script on each edit).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Re-runs this script when `file` changes; a missing file is not watched (cargo would
/// otherwise re-run the script, and rebuild the crate, on every build).
fn watch(file: &Path) {
    if file.exists() {
        println!("cargo:rerun-if-changed={}", file.display());
    }
}

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Only this crate's own repository: a tarball unpacked inside another checkout must
    // not claim that checkout's commit.
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .is_some_and(|top| manifest.canonicalize().is_ok_and(|m| m == top));
    let commit = ours
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten();
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SHARDMQ_GIT_COMMIT={commit}");
    // Run again when HEAD moves: a checkout (HEAD), a commit (the branch's ref, loose or
    // packed).
    for path in ["HEAD", "packed-refs"] {
        if let Some(file) = ours
            .then(|| git(&["rev-parse", "--git-path", path]))
            .flatten()
        {
            watch(&manifest.join(file));
        }
    }
    if let Some(head_ref) = ours.then(|| git(&["symbolic-ref", "-q", "HEAD"])).flatten() {
        if let Some(file) = git(&["rev-parse", "--git-path", &head_ref]) {
            // A branch only in packed-refs gets its loose file at the next commit: watch
            // the folder it appears in.
            let file = manifest.join(file);
            match file.exists() {
                true => watch(&file),
                false => file.parent().into_iter().for_each(watch),
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
